"""Agents-A1 stage 2: one domain teacher, initialised from the stage-1 checkpoint (docs/spec/recipe.md §1.3: the public
multi-teacher recipes train each teacher from the shared SFT checkpoint on its own domain).

    a1jax train --config experiments/agents_a1_teacher.py:domain=search --workdir /shared/fs/agents_a1_teacher_search
    a1jax train --config experiments/agents_a1_teacher.py:tiny,domain=scientific_agents \
        --workdir workdirs/quickstart/teacher_scientific_agents          # the tiny CPU recipe (launch/quickstart.sh)

Args (comma-separated): domain (one of a1jax.envs.names(); required), tiny (the CPU variant), rl (GRPO instead of
expert iteration), root (tiny: the recipe's workdir root, default workdirs/quickstart), init (the stage-1 workdir;
default ROOT/sft for tiny, /shared/fs/agents_a1_sft otherwise), steps.

Full size: Qwen3.5-35B-A3B on TPU v5p-512 (256 chips; same mesh as agents_a1_sft.py), 32K-token rows, 256 rows per
step (4 microbatches), rollouts up to 100 turns / 128K tokens. Not run at this size yet: times and results are not measured.
Planned for v5p-512 with the TPU compiler (`a1jax plan --config experiments/agents_a1_teacher.py:domain=search
--topology v5p-512`, libtpu 0.0.51, docs/sharding.md): per chip 9.94 GB of arguments (3.31 GB parameters, 6.62 GB Adam
state), 52.14 GB of temporaries, peak 62.08 GB of 95 GB HBM (34.7% headroom); 160 Mosaic kernel call sites; 1.27e15
FLOPs per chip per step (HLO dots x loop trips, 1.128 x analytic x remat), a roofline lower bound of 2.77 s. With `rl`
(GRPO step) the same figures. The step only: the rollout engine's KV cache is not planned.
Tiny: the tiny recipe model on 2 CPU cores; SFT by the stage-1 loop (config.stage "sft", config.init_from the
stage-1 workdir) on the domain's 2,000 expert demonstrations in another order than the student's, TINY_STEPS steps of
4 x 1,024 tokens (1.3-2 s each). Measured (2026-12-05, WORKDIR=/tmp/qs2, 32 validation tasks, the teacher check):
instruction_following 0.656 against the stage-1 student's 0.094 (loss 0.09 after 60 steps); tool_calling 0.000
against 0.031 (loss 0.11 after 150 steps, but one fixed call, "bolts" x 4, for every request); search 0.000 against
0.000 (loss 0.45 after 120 steps; from another stage-1 run, whose search loss was 0.96 instead of 1.12, the same
120 steps reached 0.08 and 26/32). Again on 2026-12-06 (WORKDIR=/tmp/qs16, constant learning rate, 913 s for the
three on a shared host): instruction_following 0.688 against 0.156 (loss 0.10), tool_calling 0.000 against 0.062
(loss 0.20), search 0.000 against 0.000 (loss 0.57 after 240 steps). README.md, "Results, as measured so far".
Stage: config.stage = "teacher_sft" (steps.teacher_sft_step) or, with `rl`, "grpo" (steps.grpo_step); tiny without
`rl`: "sft".
"""
import importlib.util
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("recipe_tiny_sft",
                                               os.path.join(REPO, "experiments", "recipe_tiny_sft.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


# Steps of each tiny teacher (4 x 1,024 tokens each; the student's stage 1 had 150 over all three domains). From the
# student of the variable-offset copy warm-up (a1jax/train/warmup.py, VARIABLE_NOTE; 2026-12-06, /tmp/p17, 32
# validation tasks): search 240 steps, 0.625 against the student's 0.000; tool_calling 150 steps, 0.125 against
# 0.156 (the values copied, the inventory tools confused), 400 steps 0.750; instruction_following 60 steps, 0.750
# against 0.250. Before that warm-up the search and tool_calling teachers stayed at 0/32 on their copy plateau
# (docs/recipe.md).
TINY_STEPS = {"instruction_following": 60, "tool_calling": 400, "search": 240}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    a = tiny.parse_arg(arg, {"domain": "", "tiny": False, "rl": False, "root": "workdirs/quickstart", "init": "",
                             "steps": ""})
    if not a["domain"]:
        raise ValueError("experiments/agents_a1_teacher.py: pass the domain, e.g. ':domain=search' or "
                         "':tiny,domain=search'")
    c = ml_collections.ConfigDict()
    c.stage = "grpo" if a["rl"] else "teacher_sft"
    c.seed = 0
    c.data = ml_collections.ConfigDict()
    c.data.tokenizer = "qwen3_5"
    c.envs = ml_collections.ConfigDict(dict(domains=[a["domain"]], horizons=[1], tasks_per_domain=8, task_seed=1,
                                            options={}))
    # enable_thinking="model": the prompt stops at "<|im_start|>assistant\n" and the model opens its own <think> block,
    # as in the stage-1 SFT tokens (a1jax.data.chat.THINKING_MODES; the template's "<think>\n" splits the "\n\n"
    # token of an empty think block, which an a1jax-trained model has never seen).
    c.rollout = ml_collections.ConfigDict(dict(
        batch_size=8, max_len=16384, max_new_tokens=96, max_turns=3, max_tokens=1536, enable_thinking="model",
        temperature=1.0, top_p=1.0, top_k=0, presence_penalty=0.0, group_size=4))
    c.expert_iteration = ml_collections.ConfigDict(dict(rollout_every=10, rollout_fraction=0.5, demos=200))
    c.grpo = ml_collections.ConfigDict(dict(loss_type="ppo", eps_low=0.2, eps_high=0.28, kl_coef=0.0, norm="token"))
    c.eval = ml_collections.ConfigDict(dict(every=0, batches=1))
    c.checkpoint = ml_collections.ConfigDict(dict(every=20, keep=2, async_save=True))
    if a["tiny"] and not a["rl"]:
        # Plain SFT on the domain's expert demonstrations, by the stage-1 loop and objective: at this scale expert
        # iteration accepted 0-1 rollouts per round, so the teacher's edge comes from more steps on more of its own
        # domain (another data order than the student's, so mostly demonstrations the student never saw).
        d = a["domain"]
        c = tiny.get_config(f"root={a['root']},domains={d},steps={a['steps'] or TINY_STEPS.get(d, 120)}")
        c.init_from = a["init"] or os.path.join(tiny.root_dir(a["root"]), "sft")
        c.data.seed = 1
        # A constant learning rate after the warm-up, tried because a cosine decay reached its floor while the search
        # teacher was still on its copy plateau (240 steps, loss 0.49, 0/32; 2026-12-06, WORKDIR=/tmp/qs15). It did
        # not move it off either (loss 0.57, 0/32; WORKDIR=/tmp/qs16, whose teachers the README's table uses).
        c.optimizer.update(dict(schedule="constant", min_lr_ratio=1.0))
        c.checkpoint.every = 60
        return c
    if a["tiny"]:  # tiny GRPO
        root = tiny.root_dir(a["root"])
        tiny.tiny_model(c)
        d = a["domain"]
        c.envs.horizons = [tiny.HORIZONS.get(d, 1)]
        c.envs.options = {d: dict(tiny.ENV_OPTIONS[d])} if d in tiny.ENV_OPTIONS else {}
        c.init_from = a["init"] or os.path.join(root, "sft")
        c.data.seq_len, c.data.batch_size = tiny.SEQ_LEN, 16
        c.expert_iteration.update(dict(rollout_fraction=0.5, demos=2000))
        c.envs.tasks_per_domain = 4
        c.optimizer = ml_collections.ConfigDict(dict(
            learning_rate=2e-3, warmup_steps=5, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.0,
            b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0))
        c.train = ml_collections.ConfigDict(dict(steps=int(a["steps"] or 120), microbatches=1, log_every=10,
                                                 z_loss_coef=0.0, mtp_loss_coef=0.0, max_consecutive_skips=5))
        c.checkpoint.every = 60
        return c
    # Full size: the stage-1 model and mesh (agents_a1_sft.py), rollouts at the Agents-A1 eval budget.
    c.model = ml_collections.ConfigDict()
    c.model.preset = "qwen35_35b_a3b"
    c.model.overrides = ml_collections.ConfigDict(dict(
        dtype="bfloat16", param_dtype="float32", scan_layers=True, remat_policy="full", loss_chunk_size=2048,
        moe_impl="auto", attention_impl="auto", deltanet_impl="auto"))
    # 64 batch shards (fsdp x expert); each microbatch of 64 rows puts one row on each (a1jax plan checks this)
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=8, expert=8, tensor=1, sequence=4))
    c.sharding_rules = ml_collections.ConfigDict()
    c.init_from = a["init"] or "/shared/fs/agents_a1_sft"
    c.data.seq_len, c.data.batch_size = 32768, 256
    c.envs.horizons, c.envs.tasks_per_domain = [1, 2, 4, 8, 16], 32
    c.rollout.update(dict(batch_size=64, max_len=262144, max_new_tokens=4096, max_turns=100, max_tokens=131072,
                          temperature=0.85, top_p=0.95, top_k=20, presence_penalty=1.1, group_size=8))
    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=2e-6, warmup_steps=10, schedule="constant", min_lr_ratio=1.0, weight_decay=0.0,
        b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(steps=int(a["steps"] or 500), microbatches=4, log_every=1,
                                             z_loss_coef=0.0, mtp_loss_coef=0.0, max_consecutive_skips=10))
    return c
