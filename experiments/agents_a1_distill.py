"""Agents-A1 stage 3: multi-teacher, domain-routed on-policy distillation of the six domain teachers into the
student (docs/spec/recipe.md §2.6, §6.4; the loss options are config.distill, a1jax/distill/steps.py OPDOptions).

    a1jax train --config experiments/agents_a1_distill.py --workdir /shared/fs/agents_a1_distill
    a1jax train --config experiments/agents_a1_distill.py:tiny --workdir workdirs/quickstart/distill   # CPU recipe

Args (comma-separated): tiny (the CPU variant), root (tiny: the recipe's workdir root, default workdirs/quickstart),
domains (tiny: colon-separated; default instruction_following:tool_calling:search), init (the student's start;
default the stage-1 workdir), steps.

Full size: Qwen3.5-35B-A3B student on TPU v5p-512 (256 chips), six in-process teachers (the stage-2 workdirs
/shared/fs/agents_a1_teacher_<domain>, frozen, on the same mesh), salient top-64 reverse KL with a tail bucket,
per-domain token-mean then equal domain weights, IS weights truncated to [0.2, 5]. Not run at this size yet.
Planned for v5p-512 with the TPU compiler (`a1jax plan --config experiments/agents_a1_distill.py --topology v5p-512`,
libtpu 0.0.51, docs/sharding.md): the step per chip 9.96 GB of arguments (3.31 GB parameters, 6.62 GB Adam state,
0.03 GB batch and top-64 targets), 49.03 GB of temporaries, peak 58.99 GB; with the six teachers' parameters resident
(19.87 GB) 78.86 GB of 95 GB HBM (17.0% headroom); 160 Mosaic kernel call sites; 2.50e15 FLOPs per chip per step
(HLO dots x loop trips, 1.128 x analytic x remat), a roofline lower bound of 5.46 s. Not planned: the teachers' scoring
pass between steps and the rollouts' KV cache.
Tiny: the stage-1 student and the stage-2 teachers of launch/quickstart.sh on 2 CPU cores: 160 updates, four per rollout
batch (config.rollout.reuse), forward KL at lr 3e-4 on rollouts sampled at T = 0.5 (since 2026-12-07; before, lr 3e-3 at
T = 1, probe I of docs/recipe.md, "Why stage 3 lowers the KL but not the success", which diverged once every domain was
distilled: docs/recipe.md, "Stage 3 with every domain distilled"). Measured (2026-12-07, a fresh main job,
WORKDIR=/tmp/qs19, 2-core CPU, at lr 1e-4): 1,918 s (teacher check 198 s, 160 updates in 1,710 s, median update
7.2 s, rollout batch about 9.7 s, teacher scoring about 2.8 s a batch); on 128 test tasks, greedy,
instruction_following 0.266 -> 0.297 (teacher 0.734), tool_calling 0.039 -> 0.117 (0.477), search 0.125 -> 0.406
[0.33, 0.49] (0.852). Stage 3 again from the same stages 0-2 at lr 3e-4 (the default since): 0.414 [0.33, 0.50],
0.078 and 0.422 [0.34, 0.51], the KL lower in every domain (docs/recipe.md, "The whole main job at these defaults").
At lr 1e-3 (80 updates, the same stages 0-2) no domain left the start's intervals: 0.289, 0.023, 0.133 (docs/recipe.md,
"What did not help"). With config.distill.policy="mix" (GKD's data mix: each domain's teacher rolls out
config.distill.off_share = 0.5 of the step's tasks; 2026-12-07, the same stages 0-2, 160 updates, 1,655 s):
0.523 [0.44, 0.61], 0.125 and 0.430 [0.35, 0.52], mean 0.359 against the recipe's 0.305 (docs/recipe.md, "Both
together: GKD's data mix"); the default stays "on" until a whole main job has run with it.
Search tasks come from world 0 of the search environment (recipe_tiny_sft.ENV_OPTIONS, since 2026-12-07 night:
before, every step drew a new knowledge base; docs/recipe.md, "Stage 3 drew its search tasks from new worlds"). With
it, from /tmp/qs21's stages 0-2 (/tmp/qs22: 1,808 s with the teacher check; updates 1,138 s, median 6.8 s, and
rollouts 360 s, against 1,227 s and 411 s in /tmp/qs21's stage 3 before the fix): instruction_following 0.312 ->
0.414 [0.33, 0.50] (teacher 0.641), tool_calling 0.195 -> 0.055 (0.367), search 0.000 -> 0.000 (0.617): that
stage-1 student never copies a name out of a search result.
A fresh main job with large buffers on huge pages (2026-12-07 night, WORKDIR=/tmp/qs23, a1jax/hugepages.py) gave the
same figures bit for bit; its stage 3 took 1,905 s (updates median 6.19 s, but the first after each rollout batch
about 10 s; docs/performance.md, "Page faults").
Each rollout batch draws 32 instruction_following tasks, 16 tool_calling and 6 search (TINY_TASKS;
config.envs.domain_tasks) into rows of 2,048 tokens, 3, 6 and 6 of them (TINY_ROWS; config.envs.domain_rows), sized so
that no trajectory is dropped or cut: with the copy warm-up's variable offsets every teacher beats the student, so every
domain is distilled, and the earlier 32 tasks each in 4 rows of 1,024 tokens dropped 25-28 of every batch's 68
trajectories (search kept 2-3). A domain the teacher check leaves out is
anchored to the student's start on 4 tasks a batch (config.gate.anchor_tasks). Measured with these rows (2026-12-06
night, /tmp/qs17q, every domain distilled, 8 steps alone on the host): no trajectory dropped or cut; rollout 17.2 s a
batch (38.7 s the first), teacher scoring 11.9-14.7 s, update 10.1-11.8 s, so about 50 minutes for the 160 updates. With
the CPU formulations, the growing engine cache and the teachers' power-of-two position buckets (2026-12-07, /tmp/qs18,
alone on the host): rollout 10-16 s a batch (about 100 s the first, with the compiles), teacher scoring 2-4 s once its
few programs are compiled, update 10-15 s (the update did not get faster), so about 40 minutes. Measured with the
earlier rows (2026-12-06, WORKDIR=/tmp/qs16, instruction_following distilled, tool_calling and search anchored; a CI
rehearsal shared the host until step 148): 3,868 s; per step rollout 46.5 s (17-29 s once alone), teacher scoring 3.7 s,
update 10.0 s (3-7 s alone), medians; on 128 test tasks instruction_following 0.250 -> 0.586 [0.50, 0.67] against the
teacher's 0.672 (80% of the gap), the anchored domains unchanged (README.md, "Results, as measured so far"). The earlier
default (40 updates of reverse KL at lr 1e-3 on 8 tasks per domain in 2,048-token rows) lowered the KL and left success
at 0.242.
Stage: config.stage = "opd" (steps.opd_step, with the routed teacher targets as its third argument). Sampling is at
T = 1 (the tiny one at T = 0.5) without filters or penalties, so behaviour log-probs are the student's own
(settings.py enforces it; with T < 1 the importance ratio takes the T = 1 log-probs of the sampled tokens).
"""
import importlib.util
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("recipe_tiny_sft",
                                               os.path.join(REPO, "experiments", "recipe_tiny_sft.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)
REUSE = 4  # tiny: updates per rollout batch (config.rollout.reuse)
# Tiny: tasks per rollout batch of the domains whose trajectories are long (the others: tasks_per_domain, 32), and
# the 2,048-token rows each domain gets. A search trajectory at horizon 2 is 1,100-1,600 tokens, one to a row; a
# tool_calling one about 560 (three to a row); 32 instruction_following ones fill about two. With 32 tasks each in
# 4 rows of 1,024 tokens, 25-28 of every batch's 68 trajectories were dropped and search kept 2-3 (docs/recipe.md).
TINY_TASKS = {"tool_calling": 16, "search": 6}
TINY_ROWS = {"instruction_following": 3, "tool_calling": 6, "search": 6}
SIX = ("search", "engineering", "science", "instruction_following", "tool_calling", "scientific_agents")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    a = tiny.parse_arg(arg, {"tiny": False, "root": "workdirs/quickstart", "domains": "", "init": "", "steps": ""})
    c = ml_collections.ConfigDict()
    c.stage = "opd"
    c.seed = 0
    c.data = ml_collections.ConfigDict()
    c.data.tokenizer = "qwen3_5"
    c.distill = ml_collections.ConfigDict(dict(
        estimator="salient", direction="reverse", mode="tail", include_sampled=True, is_low=0.2, is_high=5.0,
        norm="domain", domain_weighting="fixed", sft_coef=0.0, reward_coef=0.0, policy="on", off_share=0.5,
        off_temperature=-1.0))
    # enable_thinking="model": the prompt stops at "<|im_start|>assistant\n" and the model opens its own <think> block,
    # as in the stage-1 SFT tokens (a1jax.data.chat.THINKING_MODES; the template's "<think>\n" splits the "\n\n"
    # token of an empty think block, which an a1jax-trained model has never seen).
    c.rollout = ml_collections.ConfigDict(dict(  # T = 1, no filters, no penalties: behaviour = student
        batch_size=8, max_len=16384, max_new_tokens=96, max_turns=3, max_tokens=1536, enable_thinking="model",
        temperature=1.0, top_p=1.0, top_k=0, presence_penalty=0.0, group_size=1, reuse=1))
    c.eval = ml_collections.ConfigDict(dict(every=0, batches=1))
    c.checkpoint = ml_collections.ConfigDict(dict(every=10, keep=2, async_save=True))
    if a["tiny"]:
        root = tiny.root_dir(a["root"])
        domains = a["domains"].split(":") if a["domains"] else list(tiny.DOMAINS)
        tiny.tiny_model(c)
        c.init_from = a["init"] or os.path.join(root, "sft")
        # Rows of 2,048 tokens, split by what each domain's trajectories need (TINY_ROWS, TINY_TASKS below).
        rows = {d: TINY_ROWS.get(d, 4) for d in domains}
        c.data.seq_len, c.data.batch_size = 2048, sum(rows.values())
        c.envs = ml_collections.ConfigDict(dict(
            domains=domains, horizons=[1], tasks_per_domain=8, task_seed=2,
            domain_horizons={d: [tiny.HORIZONS[d]] for d in domains if tiny.HORIZONS.get(d, 1) != 1},
            domain_tasks={d: TINY_TASKS[d] for d in domains if d in TINY_TASKS}, domain_rows=rows,
            options={d: dict(tiny.ENV_OPTIONS[d]) for d in domains if d in tiny.ENV_OPTIONS}))
        c.teachers = [dict(domain=d, workdir=os.path.join(root, f"teacher_{d}"), k=64) for d in domains]
        c.gate = ml_collections.ConfigDict(dict(tasks=32, margin=0.0, keep=[]))
        # A 4,096-slot engine cache, not 16,384 (measured before the cache grew with use, a1jax/rollout/engine.py;
        # a call now costs the slots in use): every decode step attended over all of the cache's slots, so the
        # bigger cache made the teacher check and the report 3.2x slower (gate.greedy_success of the stage-1
        # student on 24 search tasks at horizon 2, one process, 2-core CPU: 28.9 s against 93.0 s warm, the same
        # trajectories token for token). 2,048 slots is slower again (34.9 s): the loop empties a full cache and
        # re-prefills the live rows. A trajectory (max_tokens 1,536 + one turn of 96) always fits.
        c.rollout.update(dict(batch_size=24, max_len=4096))
        # Forward KL, four updates per rollout batch; 160 updates on 40 rollout batches. A domain the teacher check
        # leaves out is anchored on 4 tasks a batch. lr 3e-4 and rollouts at T = 0.5 (2026-12-07, docs/recipe.md,
        # "Stage 3 with every domain distilled"): with all three domains distilled, lr 3e-3 (probe I's, which closed
        # 80% of the instruction_following gap when it was distilled alone) and 1e-3 raised the KL of each new
        # rollout batch and took tool_calling's rollout success to 0 within 8 updates; at 1e-4 it fell, and 3e-4
        # ended with a lower KL in every domain than 1e-4 (same stages 0-2, 160 updates each).
        c.rollout.temperature = 0.5
        c.envs.tasks_per_domain = 32
        c.gate.anchor_tasks = 4
        c.rollout.reuse = REUSE
        c.distill.direction = "forward"
        c.checkpoint.every = 20  # a multiple of rollout.reuse
        c.optimizer = ml_collections.ConfigDict(dict(
            learning_rate=3e-4, warmup_steps=5, schedule="constant", min_lr_ratio=1.0, weight_decay=0.0,
            b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0))
        c.train = ml_collections.ConfigDict(dict(steps=int(a["steps"] or 160), microbatches=1, log_every=5,
                                                 z_loss_coef=0.0, mtp_loss_coef=0.0, max_consecutive_skips=5))
        return c
    c.model = ml_collections.ConfigDict()
    c.model.preset = "qwen35_35b_a3b"
    c.model.overrides = ml_collections.ConfigDict(dict(
        dtype="bfloat16", param_dtype="float32", scan_layers=True, remat_policy="full", loss_chunk_size=2048,
        moe_impl="auto", attention_impl="auto", deltanet_impl="auto"))
    # 64 batch shards (fsdp x expert); each of the 3 microbatches of 64 rows puts one row on each
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=8, expert=8, tensor=1, sequence=4))
    c.sharding_rules = ml_collections.ConfigDict()
    c.init_from = a["init"] or "/shared/fs/agents_a1_sft"
    c.data.seq_len, c.data.batch_size = 65536, 192  # 32 rows per domain
    c.envs = ml_collections.ConfigDict(dict(domains=list(SIX), horizons=[1, 2, 4, 8, 16, 32], tasks_per_domain=16,
                                            task_seed=2, options={}))
    c.teachers = [dict(domain=d, workdir=f"/shared/fs/agents_a1_teacher_{d}", k=64) for d in SIX]
    c.rollout.update(dict(batch_size=96, max_len=262144, max_new_tokens=4096, max_turns=100, max_tokens=65536))
    c.optimizer = ml_collections.ConfigDict(dict(  # MOPD's range (docs/spec/recipe.md §2.6)
        learning_rate=1e-6, warmup_steps=10, schedule="constant", min_lr_ratio=1.0, weight_decay=0.0,
        b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(steps=int(a["steps"] or 300), microbatches=3, log_every=1,
                                             z_loss_coef=0.0, mtp_loss_coef=0.0, max_consecutive_skips=10))
    return c
