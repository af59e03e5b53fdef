"""`a1jax train --config experiments/FILE.py[:arg] --workdir DIR [--init_from CKPT] [--config.x.y=value ...]`.

Run the same command in every process of a multi-process job; `a1jax.distributed` lists the environment variables
that make the processes one job (A1JAX_COORDINATOR_ADDRESS / A1JAX_NUM_PROCESSES / A1JAX_PROCESS_ID, SLURM, TPU pods).
"""
from __future__ import annotations

import logging

from a1jax.train import experiment


def add_parser(sub):
    p = sub.add_parser("train", help="run an experiment (resumes from the latest checkpoint in --workdir)",
                       epilog="Any --config.FIELD=VALUE flag overrides a field of the experiment config.")
    p.add_argument("--config", required=True, help="experiments/FILE.py or experiments/FILE.py:ARG")
    p.add_argument("--workdir", required=True, help="checkpoints, config.json, metrics.jsonl and TensorBoard logs")
    p.add_argument("--init_from", default="", help="start from a training workdir (its newest checkpoint) or a "
                                                   "converted checkpoint (a1jax convert --from-hf)")
    p.add_argument("--allow_fresh_start", action="store_true",
                   help="start from step 0 even though the checkpoints in --workdir are damaged or were set aside "
                        "as damaged (without it, such a run refuses to start)")
    p.set_defaults(func=run, accepts_config_overrides=True)


def setup_logging() -> None:
    """a1jax's INFO lines (resumed step, checkpoint fallbacks) on stderr, other libraries' from WARNING. `force`:
    absl (imported by orbax) may already have put a bare handler on the root logger, which would make a plain
    basicConfig a no-op."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("a1jax").setLevel(logging.INFO)


def run(args) -> int:
    setup_logging()
    from a1jax import distributed
    distributed.initialize()  # multi-process runs (A1JAX_*, SLURM, TPU pods): before anything touches a device
    config = experiment.apply_overrides(experiment.load(args.config), args.config_overrides)
    from a1jax import stages  # the stage table (imports jax-heavy modules)
    exp = stages.validate(config)  # before anything compiles
    from a1jax.train.loop import run_stage  # every stage: its step and batch source come from the table
    run_stage(exp, args.workdir, init_from=args.init_from, allow_fresh_start=args.allow_fresh_start)
    return 0
