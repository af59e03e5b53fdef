"""`a1jax plan`: the command line of the planner (a1jax/plan.py) and of its compiled-for-a-topology mode
(a1jax/aot.py). Apart from both so that neither imports the other's caller."""
from __future__ import annotations

import json
import sys
import time

from a1jax.plan import (DEFAULT_KIND, HBM_BYTES, device_table, format_report, plan, required_devices, resolve_impls,
                        use_cpu_devices)


def add_parser(sub):
    p = sub.add_parser("plan", help="compile the train step on N virtual CPU devices: memory, FLOPs, fits or not",
                       epilog="Any --config.FIELD=VALUE flag overrides a field of the experiment config.")
    p.add_argument("--config", required=True, help="experiments/FILE.py or experiments/FILE.py:ARG")
    p.add_argument("--devices", type=int, default=0, help="virtual devices (default: the product of config.mesh)")
    p.add_argument("--platform", choices=sorted(DEFAULT_KIND), default="tpu", help="target platform for the verdict")
    p.add_argument("--device_kind", default="", help=f"one of {sorted(HBM_BYTES)} (default: tpu v5p / h100)")
    p.add_argument("--json", default="", help="also write the plan as JSON to this file")
    p.add_argument("--topology", default="", help="compile with the TPU or GPU compiler (no device needed) for this "
                   "topology, e.g. v5p-512, v6e-256, v5p:4x8x8, h100-64 (a1jax/aot.py); then --devices/--platform/"
                   "--device_kind are unused")
    p.add_argument("--slices", type=int, default=1, help="with --topology: number of slices (multi-slice over DCN)")
    p.add_argument("--dump_hlo", default="", help="with --topology: write the compiled module's HLO text to this file")
    p.set_defaults(func=run, accepts_config_overrides=True)


def run(args) -> int:
    from a1jax import stages
    from a1jax.train import experiment
    config = experiment.apply_overrides(experiment.load(args.config), args.config_overrides)
    if getattr(args, "topology", ""):
        exp = stages.validate(config, check_vocabulary=False)  # a plan compiles shapes; it never reads a token
        return run_topology(args, config, exp)
    resolved = resolve_impls(config, args.platform)
    exp = stages.validate(config, check_vocabulary=False)
    kind = args.device_kind or DEFAULT_KIND[args.platform]
    device_table(kind, HBM_BYTES)  # an unknown kind fails before any work
    n = args.devices or required_devices(config)
    if not n or n < 1:
        raise ValueError(f"--devices: config.mesh {dict(config.mesh)} has a -1 axis, so give a positive --devices")
    t = time.perf_counter()
    result = plan(exp, devices=use_cpu_devices(n), device_kind=kind)
    result["times"]["total_s"] = time.perf_counter() - t
    result["config"]["resolved_impls"] = resolved
    print(format_report(result))
    print(f"\ntotal {result['times']['total_s']:.1f}s", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


def run_topology(args, config, exp) -> int:
    """`--topology`: the plan compiled by XLA:TPU for a real TPU topology (a1jax/aot.py)."""
    from a1jax import aot
    topo = aot.parse_topology(args.topology, args.slices)
    t = time.perf_counter()
    result = aot.plan_topology(exp, config, topo, dump_hlo=args.dump_hlo)
    result["times"]["total_s"] = time.perf_counter() - t
    print(aot.format_report(result))
    print(f"\ntotal {result['times']['total_s']:.1f}s", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0
