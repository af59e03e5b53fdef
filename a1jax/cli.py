"""The `a1jax` command line: one subcommand per job. Each subcommand lives beside the code it drives."""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module with `add_parser(subparsers)`; the module's parser sets `func(args) -> int`.
SUBCOMMANDS = {
    "summary": "a1jax.model.summary",
    "convert": "a1jax.convert.cli",
    "data": "a1jax.data.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a1jax", description="Train Agents-A1-style agentic MoE models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        print(f"a1jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
