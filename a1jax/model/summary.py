"""`a1jax summary`: parameter counts and the per-layer layout of a model preset."""
from __future__ import annotations

from a1jax.model import params, presets


def add_parser(sub):
    p = sub.add_parser("summary", help="print parameter counts and the per-layer layout of a model preset")
    p.add_argument("--preset", default="qwen35_35b_a3b", help=f"one of {sorted(presets.PRESETS)}")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = presets.get(args.preset)
    print(f"model preset {args.preset}")
    print(params.layout_summary(cfg))
    return 0
