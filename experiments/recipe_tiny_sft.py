"""The tiny CPU recipe, stage 1: SFT on expert demonstrations of the recipe's domains, from the copy warm-up.

    a1jax envs demos --domain instruction_following --n 2000 --horizon 1 \
        --out workdirs/quickstart/demos/instruction_following.jsonl
    a1jax envs demos --domain tool_calling --n 2000 --horizon 1 --option tool_set=apis --option values=code \
        --out workdirs/quickstart/demos/tool_calling.jsonl
    a1jax envs demos --domain search --n 2000 --horizon 2 --out workdirs/quickstart/demos/search.jsonl
    a1jax warmup --config experiments/recipe_tiny_sft.py --out workdirs/quickstart/warmup
    a1jax train --config experiments/recipe_tiny_sft.py:root=workdirs/quickstart --workdir workdirs/quickstart/sft \
        --init_from workdirs/quickstart/warmup

Hardware: CPU, 2 cores, one XLA thread; 150 steps of 4 x 1,024 tokens, about 4 minutes (2,550-2,900 tokens/s;
2026-12-05, `bash launch/quickstart.sh`). Loss per supervised token at step 150 (2026-12-05, WORKDIR=/tmp/qs2):
instruction_following 1.11, tool_calling 0.26, search 1.12.
`bash launch/quickstart.sh` runs this as step 1 of the whole recipe (then agents_a1_teacher.py:tiny,domain=D for each
domain, then agents_a1_distill.py:tiny). Args (comma-separated key=value): root (where the demos are and the later
stages look; default workdirs/quickstart), domains (colon-separated), steps, shipped (weight of the real
trajectories of data/quickstart in the mix; default 0, off: SHIPPED_NOTE below).
The model is the tiny Qwen3.5-MoE (3 DeltaNet + 1 attention layer, 8 experts top-2, hidden 128, tied embeddings) on
the compact 4,096-id vocabulary; TINY_MODEL here is the one all tiny recipe stages share. It starts from the copy
warm-up (`a1jax warmup`, docs/recipe.md "Why the tiny recipe starts with a copy warm-up"): from random weights the
same SFT leaves tool_calling and search at 0/32.
"""
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Three domains: two single-call ones (instruction_following needs the instruction's type; tool_calling needs the
# arguments copied exactly from the request) and search at horizon 2: two dependent searches, the second query built
# from what the first one returned, then the answer.
DOMAINS = ("instruction_following", "tool_calling", "search")
HORIZONS = {"instruction_following": 1, "tool_calling": 1, "search": 2}
# tool_calling shows only the tools of the APIs a request touches (its tool_set option): about 540 tokens a task
# instead of 1,160, so a step holds twice the examples; the model still picks the tool and copies its arguments.
# Its requests write the values a call copies in backticks (values="code"): then ' `gears`' and the call's "\ngears\n"
# hold the same tokens, where a plain ' gears' is one token and the argument's 'gears' two (a1jax/envs/tool_calling.py).
# search draws every task from one knowledge base, world 0 (the demonstrations', teacher check's and report's): the
# loops that draw new tasks by seed each step (stage 3) otherwise met a new world of new names at every step, where
# the search teacher solved 0.29 of the tasks instead of 0.875 (a1jax/envs/search.py, WORLD_NOTE).
ENV_OPTIONS = {"tool_calling": {"tool_set": "apis", "values": "code"}, "search": {"world": 0}}
# The compact Qwen3.5 vocabulary (a1jax/data/tokenizers/compact.py: its bytes, special tokens and the recipe
# corpus's 3,807 most frequent tokens; lossless, same chat template) instead of 248,320 rows, so the budget goes into
# the body and more steps.
TOKENIZER = "qwen3_5_compact"
# Tied input and output embeddings, as the small Qwen3.5 models have: copying a token is then close to the identity
# from the start (benchmarks/copy_task.py: all-attention copy over 4,096 ids passes 0.9 at step 166 tied, still at
# chance at step 700 untied).
TINY_MODEL = dict(
    vocab_size=4096, tie_word_embeddings=True, hidden_size=128, linear_key_head_dim=32, linear_value_head_dim=32,
    moe_intermediate_size=128,
    shared_expert_intermediate_size=128, loss_chunk_size=256, deltanet_chunk_size=64, max_position_embeddings=16384,
    # The platform's own formulations (kernels/backend.py; on CPU the causal query blocks and the matmul-only DeltaNet
    # inverse), not ModelConfig's reference defaults: a stage-1 step of 4 x 1,024 takes 1.09 s against 1.71 s
    # (`python -m benchmarks.train_step --config experiments/recipe_tiny_sft.py`, one XLA thread, idle 2-core host,
    # 2026-12-07; the reference's attention was 30% of the step and its LAPACK triangular solve 7%, per
    # `python -m benchmarks.profile_step --config experiments/recipe_tiny_sft.py`).
    attention_impl="auto", deltanet_impl="auto")
SEQ_LEN = 1024
# The real trajectories shipped in data/quickstart (tau-bench, ToolBench, SWE-agent; experiments/quickstart.py trains
# on them alone). SHIPPED_NOTE: mixed into this stage at weight 0.3 they left the student unable to learn search
# afterwards: 270 more search-only steps from that student reached loss 0.42 and 0/32, against loss 0.08 and 26/32
# after 120 steps from the same stage without them (single runs, 2026-12-05; docs/recipe.md). The `shipped` arg puts
# them back at the given weight.
SHIPPED = ("data/quickstart/tau_bench_airline.jsonl", "data/quickstart/toolbench.jsonl",
           "data/quickstart/swe_agent.jsonl")


def parse_arg(arg: str, defaults: dict) -> dict:
    """'a=1,b=x' (and bare flags like 'tiny') -> dict over `defaults`; unknown keys are an error."""
    out = dict(defaults)
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        key, eq, value = part.partition("=")
        if key not in out:
            raise ValueError(f"experiment arg {part!r}: unknown key {key!r}; known: {sorted(out)}")
        out[key] = value if eq else True
    return out


def root_dir(root: str) -> str:
    return root if os.path.isabs(root) else os.path.join(REPO, root)


def tiny_model(c: ml_collections.ConfigDict) -> None:
    """The model, vocabulary and mesh every tiny recipe stage shares."""
    c.data.tokenizer = TOKENIZER
    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"
    c.model.overrides = ml_collections.ConfigDict(dict(TINY_MODEL))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1, sequence=1))
    c.sharding_rules = ml_collections.ConfigDict()


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    a = parse_arg(arg, {"root": "workdirs/quickstart", "domains": ":".join(DOMAINS), "steps": "150", "shipped": "0"})
    root = root_dir(a["root"])
    c = ml_collections.ConfigDict()
    c.stage = "sft"
    c.seed = 0
    c.data = ml_collections.ConfigDict()
    tiny_model(c)
    c.data.base_dir = REPO
    c.data.sources = [dict(paths=[os.path.join(root, "demos", f"{d}.jsonl")], weight=1.0)
                      for d in a["domains"].split(":")]
    if float(a["shipped"]) > 0:  # the real trajectories of data/quickstart: off by default (SHIPPED_NOTE)
        c.data.sources.append(dict(paths=list(SHIPPED), weight=float(a["shipped"])))
    c.data.eval_sources = []
    c.data.seq_len = SEQ_LEN
    c.data.batch_size = 4
    c.data.eval_batch_size = 4
    c.data.packing = "first_fit"
    c.data.overlong = "split"
    c.data.supervise = "all"
    c.data.num_epochs = None
    c.data.seed = 0
    c.data.cache_dir = os.path.join(REPO, ".cache", "tokens")
    c.data.domains = tuple(a["domains"].split(":")) + ("customer_service", "engineering", "general_agentic")
    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=3e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.01,
        b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        steps=int(a["steps"]), microbatches=1, log_every=10, z_loss_coef=0.0, mtp_loss_coef=0.0,
        max_consecutive_skips=5))
    c.eval = ml_collections.ConfigDict(dict(every=0, batches=1))
    c.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=2, async_save=True))
    return c
