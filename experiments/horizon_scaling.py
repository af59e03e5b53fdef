"""Horizon scaling: does SFT on longer trajectories beat SFT on shorter ones, training tokens matched?

    python -m benchmarks.horizon_scaling [--root workdirs/horizon] [--quick]     # the whole experiment

One student per training horizon H (default 1, 4 and 16), each trained by the stage-1 loop on expert demonstrations
of every horizon in `mixture(H)` (every power of two up to H, and H: H = 4 sees horizons 1, 2 and 4, drawn equally
often; arg `fixed` trains on H alone, the design measured on 2026-12-06), in two domains whose horizon is the number
of tool calls: `search` (follow a chain of H relations through a knowledge base; every query copies the entity the
previous result named) and `scientific_agents` (H - 1 look-ups in a table of element data, then one calculator call
that needs all of them; `science`, the 2026-12-06 second domain, copies 12-digit results and no student learnt it).
All students start from the same initialisation, the tiny recipe's copy warm-up of a freshly initialised tiny model
(`a1jax warmup`, shared by all of them; docs/recipe.md, "Why the tiny recipe starts with a copy warm-up"), share the
tiny recipe's model and compact vocabulary (experiments/recipe_tiny_sft.py: TINY_MODEL, qwen3_5_compact) and see the
same number of training tokens: benchmarks/horizon_scaling.py counts the non-padding tokens of each student's packed
batches (the same pipeline, the same seed) and gives each student the steps that reach the token budget. One
student's run:

    a1jax train --config experiments/horizon_scaling.py:root=ROOT,h=H,steps=S --workdir ROOT/h{H} \
        --init_from ROOT/warmup

Its data are ROOT/demos/<domain>_h<h>.jsonl for every h in mixture(H) (`a1jax envs demos --domain D --horizon h`).
Rows are 1 x 4,096 tokens, so a 16-hop search demonstration (about 3,900 tokens) fits whole; shorter ones are packed
several to a row. The eval section (`config.envs_eval`, read by `a1jax eval`) scores a student greedily on held-out
test tasks at every eval horizon (default 1, 2, 4, 8, 16; 64 tasks per point).

Args (comma-separated key=value): root (default workdirs/horizon), h (training horizon, default 1), steps (default
200), fixed (train on h alone), domains (colon-separated; default DOMAINS), quick (the CI smoke size: `:quick` gives
2 eval tasks per point at eval horizons 1 and 2, shorter rows).
Measured (2026-12-07 night, 2-core CPU, nothing else running, the defaults: 2,048,000 tokens per student,
`--root /tmp/hz24`): 1,634 s (27.2 minutes) in all: warm-up 63 s, students 336-338 s (548, 575 and 567 steps),
evaluation 114 s, 180 s and 218 s. Tokens matched, the student trained on horizons 1-4 solves search chains of 2 and 4
dependent calls (0.97 [0.89, 0.99] and 0.84 [0.74, 0.91]) that the horizon-1 student never solves (0/64 each), and
keeps horizon 1 (1.00 against 0.97); neither extrapolates past its longest training horizon, and the student trained
up to 16 is not competent at this budget (0.27 at horizon 1). scientific_agents: 0.38 at horizon 1 for the H = 1
student, 0 elsewhere. Table, plot and reading: docs/recipe.md, "Horizon scaling", with the earlier runs (1M tokens:
only the H = 1 student competent; fixed horizons: each student learns the length of its demonstrations).
"""
import importlib.util
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("recipe_tiny_sft",
                                               os.path.join(REPO, "experiments", "recipe_tiny_sft.py"))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

DOMAINS = ("search", "scientific_agents")
TRAIN_HORIZONS = (1, 4, 16)
EVAL_HORIZONS = (1, 2, 4, 8, 16)
EVAL_TASKS = 64  # per domain and eval horizon
SEQ_LEN = 4096  # a 16-hop search demonstration is about 3,900 compact-vocabulary tokens
QUICK = dict(train_horizons=(1, 2), eval_horizons=(1, 2), eval_tasks=2, seq_len=2048)
EVAL_BATCH = 64  # rows decoded together (16 took as long: 77.0 s against 77.8 s on the sample in eval_budgets)


def demos_path(root: str, domain: str, h: int) -> str:
    return os.path.join(tiny.root_dir(root), "demos", f"{domain}_h{h}.jsonl")


def mixture(h: int, fixed: bool = False) -> tuple[int, ...]:
    """The horizons student H trains on: every power of two up to H, and H itself (H alone with `fixed`)."""
    if fixed:
        return (h,)
    return tuple(sorted({1 << k for k in range(h.bit_length())} | {h}))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    a = tiny.parse_arg(arg, {"root": "workdirs/horizon", "h": "1", "steps": "200", "quick": False, "fixed": False,
                             "domains": ":".join(DOMAINS)})
    h = int(a["h"])
    if h < 1:
        raise ValueError(f"experiments/horizon_scaling.py arg h={a['h']!r}: expected a training horizon >= 1")
    domains = tuple(a["domains"].split(":"))
    c = tiny.get_config(f"root={a['root']},domains={':'.join(domains)},steps={a['steps']}")
    mix = mixture(h, bool(a["fixed"]))
    # Every (domain, horizon) file at the same record weight: each horizon of the mixture is drawn equally often.
    c.data.sources = [dict(paths=[demos_path(a["root"], d, x)], weight=1.0 / len(mix)) for d in domains for x in mix]
    c.data.domains = domains
    c.data.seq_len = QUICK["seq_len"] if a["quick"] else SEQ_LEN
    c.data.batch_size = 1
    c.data.eval_batch_size = 1
    c.checkpoint.every = 100
    c.train.log_every = 25
    eval_horizons = QUICK["eval_horizons"] if a["quick"] else EVAL_HORIZONS
    c.envs_eval = ml_collections.ConfigDict(dict(  # `a1jax eval`: every eval horizon at once, the longest's budgets
        domains=",".join(domains), n=QUICK["eval_tasks"] if a["quick"] else EVAL_TASKS,
        horizons=",".join(map(str, eval_horizons)), batch_size=EVAL_BATCH, thinking="model",
        **eval_budgets(max(eval_horizons))))
    return c


def eval_budgets(h: int) -> dict:
    """Rollout budgets for eval horizon h: a search hop is about 215 tokens and a science hop about 110 (call and
    result), over a prompt of about 450-650; one turn of 96 new tokens holds any expert call. The cache has
    max_tokens + 256 slots per row: every decode step attends over all of them, and twice that made the eval 1.5x
    slower for the same successes (student H = 4 at eval horizon 4, 32 tasks per domain: 77 s against 51 s)."""
    max_tokens = 700 + 260 * (h + 1)
    return {"max_turns": h + 2, "max_tokens": max_tokens, "max_new_tokens": 96,
            "max_len": min(tiny.TINY_MODEL["max_position_embeddings"], max_tokens + 256)}
