"""The recipe's measured target (a script): after multi-teacher distillation, the student's held-out success in
each distilled domain is >= 90% of that domain's teacher's.

    bash launch/quickstart.sh                                   # runs the tiny recipe and prints the same table
    python -m benchmarks.recipe [--root workdirs/quickstart] [--domains D1,D2] [--n 128]

Reads the finished workdirs of the recipe (ROOT/sft, ROOT/teacher_<domain>, ROOT/distill), scores them with
a1jax.distill.report (greedy decoding on the domains' test split, verifier success; full-vocabulary KL(student ||
teacher) on the student's own test trajectories) and says, per domain, whether the target is met. Exit status 0
either way: the numbers are the result.
"""
from __future__ import annotations

import argparse
import json
import os

from a1jax import hugepages
from a1jax.distill import report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="workdirs/quickstart")
    p.add_argument("--domains", default="", help="comma-separated (default: the domains ROOT/distill distilled)")
    p.add_argument("--n", type=int, default=128)
    args = p.parse_args()
    result = report.build_report(args.root, [d for d in args.domains.split(",") if d] or None, n=args.n)
    with open(os.path.join(args.root, "report.json"), "w") as f:
        json.dump(result, f, indent=1)
    report.figure(result, os.path.join(args.root, "report.png"))
    print(report.table(result))
    met = [d for d, r in result["domains"].items() if r["meets_target"]]
    print(f"target met in {len(met)}/{len(result['domains'])} domains"
          + (f" ({', '.join(met)})" if met else ""))


if __name__ == "__main__":
    hugepages.ensure()  # as the `a1jax` command runs: large buffers on huge pages
    main()
