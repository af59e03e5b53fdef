"""`a1jax train --config experiments/FILE.py[:arg] --workdir DIR [--init_from CKPT] [--config.x.y=value ...]`."""
from __future__ import annotations

import logging

from a1jax.train import experiment


def add_parser(sub):
    p = sub.add_parser("train", help="run an experiment (resumes from the latest checkpoint in --workdir)",
                       epilog="Any --config.FIELD=VALUE flag overrides a field of the experiment config.")
    p.add_argument("--config", required=True, help="experiments/FILE.py or experiments/FILE.py:ARG")
    p.add_argument("--workdir", required=True, help="checkpoints, config.json, metrics.jsonl and TensorBoard logs")
    p.add_argument("--init_from", default="", help="start from a converted checkpoint (a1jax convert --from-hf)")
    p.set_defaults(func=run, accepts_config_overrides=True)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = experiment.apply_overrides(experiment.load(args.config), args.config_overrides)
    exp = experiment.validate(config)  # before anything compiles
    from a1jax.train.loop import train  # imports jax-heavy modules only once the config is known to be valid
    train(exp, args.workdir, init_from=args.init_from)
    return 0
