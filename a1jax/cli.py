"""The `a1jax` command line: one subcommand per job. Each subcommand lives beside the code it drives."""
from __future__ import annotations

import argparse
import importlib
import sys

from a1jax.storage import StorageError

# subcommand -> module with `add_parser(subparsers)`; the module's parser sets `func(args) -> int`.
SUBCOMMANDS = {
    "summary": "a1jax.model.summary",
    "train": "a1jax.train_cli",
    "warmup": "a1jax.train.warmup",
    "convert": "a1jax.convert.cli",
    "data": "a1jax.data.cli",
    "generate": "a1jax.rollout.cli_generate",
    "rollout": "a1jax.rollout.cli",
    "plan": "a1jax.plan_cli",
    "envs": "a1jax.envs.cli",
    "eval": "a1jax.envs.evaluate",
}


# RuntimeErrors that are a run's own verdict, reported in one line with exit status 3 (names: no jax import here)
STOPS = ("TrainingStopped", "CheckpointError", "CheckpointDamaged")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a1jax", description="Train Agents-A1-style agentic MoE models in JAX.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `a1jax` command itself (not a call from Python): the allocator for large buffers
        from a1jax import hugepages
        try:
            hugepages.ensure()
        except ValueError as e:  # a bad A1JAX_HUGEPAGES or A1JAX_TCMALLOC
            print(f"a1jax: error: {e}", file=sys.stderr)
            return 2
    from a1jax import distributed
    distributed.pin_host_platforms()  # a CPU host with libtpu installed stays on CPU, quietly
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_config_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.config_overrides = extra
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, StorageError) as e:  # user errors: one clear line, no traceback
        print(f"a1jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a run that stopped itself (guard, no usable checkpoint): one line, no traceback
        if type(e).__name__ not in STOPS:
            raise
        print(f"a1jax {args.command}: stopped: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
