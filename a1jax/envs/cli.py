"""`a1jax envs ...`: list the environments and write expert demonstrations.

  a1jax envs list
  a1jax envs demos --domain D --n N [--horizon H] [--seed S] [--split train] [--option K=V ...] --out FILE.jsonl

Demonstrations are trajectory JSONL (a1jax/data/schema.py), ready for `a1jax data stats` and the training pipeline.
Without --horizon the tasks mix the domain's horizons.
"""
from __future__ import annotations

import argparse
import importlib
import time

from a1jax.envs import registry


def add_parser(sub) -> None:
    parser = sub.add_parser("envs", help="environments: list them, write expert demonstrations",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="envs_command", required=True, metavar="ENVS_COMMAND")
    p = commands.add_parser("list", help="the registered domains and whether each can be loaded")
    p.set_defaults(func=run_list)
    p = commands.add_parser("demos", help="write scripted expert trajectories as JSONL")
    p.add_argument("--domain", required=True, help="one of: " + ", ".join(registry.names()))
    p.add_argument("--n", type=int, required=True, help="number of demonstrations")
    p.add_argument("--horizon", type=int, default=None, help="tool calls per expert solution (default: a mix)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", choices=("train", "valid", "test"))
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the domain's environment (e.g. tool_calling's tool_set=apis); repeatable")
    p.add_argument("--out", required=True, metavar="FILE.jsonl")
    p.set_defaults(func=run_demos)


def run_list(args) -> int:
    for name in registry.names():
        module = registry.BUILTINS.get(name)
        try:
            doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()[0] if module else "plug-in"
        except ImportError as e:
            doc = f"(unavailable: {e})"
        print(f"{name:<22} {doc}")
    return 0


def run_demos(args) -> int:
    from a1jax.envs.demos import write_demonstrations
    if args.domain not in registry.names():
        raise ValueError(f"--domain={args.domain!r}: expected one of {', '.join(registry.names())}")
    if args.n < 1:
        raise ValueError(f"--n={args.n}: expected a positive integer")
    options = {}
    for item in args.option:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--option={item!r}: expected KEY=VALUE")
        options[key] = value
    start = time.time()
    n = write_demonstrations(args.out, args.domain, n=args.n, split=args.split, seed=args.seed, horizon=args.horizon,
                             **options)
    print(f"wrote {n} {args.domain} demonstrations to {args.out} ({time.time() - start:.1f}s)")
    return 0
