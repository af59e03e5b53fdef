"""What each part of stage 3 is worth: the tiny recipe's distillation against three ablations, all from
the same stage-1 student and stage-2 teachers, with the same steps, seeds, tasks per step and rollout settings.

    python -m benchmarks.ablation --root workdirs/quickstart [--steps N] [--n 128] [--variants a,b,c,d]
                                  [--out DIR] [--parallel 2] [--single-teacher DOMAIN] [--domains D1:D2]
                                  [--set KEY=VALUE ...]

Variants (each a stage-3 run, `a1jax train --config benchmarks/ablation.py:root=ROOT,variant=V,steps=N`, into
OUT/<variant>/distill; this file's get_config is experiments/agents_a1_distill.py:tiny plus the variant's change):
  a  routed: the recipe, multi-teacher on-policy distillation, each domain's rollouts scored by its own teacher;
  b  single_teacher: the same, but every domain distils from ONE teacher (--single-teacher, default the first
     domain's; any domain with a ROOT/teacher_<domain> workdir, so a one-domain run can distil from another
     domain's teacher): routing switched off;
  c  off_policy: sequence-level KD, SFT of the student on the teachers' own rollouts of the same tasks
     (config.distill.policy="off", a1jax/distill/opd.py);
  d  sampled: the recipe with the single-sample estimator instead of the salient top-k one
     (config.distill.estimator="sampled"; compare with a);
  e  mixed: GKD's data mix between a and c: each domain's teacher rolls out half of the step's tasks and the
     student the other half, all scored by the domain's teacher (config.distill.policy="mix", off_share 0.5).
Every variant runs with the teacher check off (config.gate.tasks=0), so all distil the same domains. Each student is
then scored like the recipe's report (a1jax.distill.report.student_on_test: greedy decoding on N held-out test tasks
per domain, the domains' verifiers, 95% Wilson intervals). The table gives, per variant, each domain's success, their
mean, the student updates applied, the rollout tokens generated over the run (Σ tokens/<domain> of
metrics.jsonl: the student's for a, b, d, the teachers' for c, both for e) and the wall time of training and of scoring.
Writes OUT/ablation.json (default OUT: ROOT/ablation). --parallel 2 runs two variants at a time (on 2 cores: XLA is
then made single-threaded in each, unless XLA_FLAGS already says otherwise). --set forwards `--config.KEY=VALUE` to
every variant's run (the same for all). Not part of the main job (launch/quickstart.sh): run it after it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS = os.path.abspath(__file__)
RECIPE = os.path.join(REPO, "experiments", "agents_a1_distill.py")
VARIANTS = {"a": "routed", "b": "single_teacher", "c": "off_policy", "d": "sampled", "e": "mixed"}
SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _parse_arg(arg: str) -> dict:
    out = {"root": "workdirs/quickstart", "variant": "a", "steps": "", "single_teacher": "", "domains": ""}
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        key, _, value = part.partition("=")
        if key not in out:
            raise ValueError(f"benchmarks/ablation.py arg {part!r}: unknown key {key!r}; known: {sorted(out)}")
        out[key] = value
    if out["variant"] not in VARIANTS:
        raise ValueError(f"benchmarks/ablation.py arg variant={out['variant']!r}: expected one of {sorted(VARIANTS)}")
    return out


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The stage-3 config of one variant: the tiny recipe's (experiments/agents_a1_distill.py:tiny) with the teacher
    check off and the variant's one change."""
    from a1jax.train import experiment
    a = _parse_arg(arg)
    root = os.path.abspath(a["root"])
    c = experiment.load(f"{RECIPE}:tiny,root={root}" + (f",steps={a['steps']}" if a["steps"] else "")
                        + (f",domains={a['domains']}" if a["domains"] else ""))
    c.gate = ml_collections.ConfigDict(dict(tasks=0, margin=0.0, keep=[]))
    domains = list(c.envs.domains)
    if a["variant"] == "b":
        one = a["single_teacher"] or domains[0]
        if one not in domains and not os.path.isdir(os.path.join(root, f"teacher_{one}")):
            raise ValueError(f"benchmarks/ablation.py arg single_teacher={one!r}: no teacher workdir "
                             f"{os.path.join(root, f'teacher_{one}')} (a domain of {domains} or another trained one)")
        teachers = [dict(t) for t in c.teachers]
        for t in teachers:
            t["workdir"] = os.path.join(root, f"teacher_{one}")
        c.teachers = teachers
    elif a["variant"] == "c":
        c.distill.policy = "off"
    elif a["variant"] == "d":
        c.distill.estimator = "sampled"
    elif a["variant"] == "e":
        c.distill.policy = "mix"
    return c


# --- running and scoring -------------------------------------------------------------------------------------------

def run_metrics(workdir: str) -> dict:
    """From WORKDIR/metrics.jsonl: steps run, student updates applied, rollout tokens generated (Σ tokens/<domain>)."""
    by_step = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "train/loss" in row:
                by_step[row["step"]] = row  # a resumed run may repeat a step: the last one counts
    rows = list(by_step.values())
    tokens = sum(v for r in rows for k, v in r.items() if k.startswith("tokens/"))
    skipped = sum(r.get("train/skipped_updates", 0.0) for r in rows)
    return {"steps": len(rows), "updates": int(len(rows) - skipped), "rollout_tokens": int(tokens)}


def _env(parallel: int) -> dict:
    env = dict(os.environ)
    if parallel > 1 and "XLA_FLAGS" not in env:
        env["XLA_FLAGS"] = SINGLE_THREAD
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_variant(v: str, args) -> dict:
    """Trains variant `v` into OUT/<v>/distill, then scores it (a subprocess each); its row of the table."""
    vroot = os.path.join(args.out, VARIANTS[v])
    os.makedirs(vroot, exist_ok=True)
    spec = f"{THIS}:root={args.root},variant={v}" + (f",steps={args.steps}" if args.steps else "")
    spec += f",single_teacher={args.single_teacher}" + (f",domains={args.domains}" if args.domains else "")
    train = [sys.executable, "-m", "a1jax.cli", "train", "--config", spec, "--workdir",
             os.path.join(vroot, "distill"), *[f"--config.{s}" for s in args.set]]
    score = [sys.executable, "-m", "benchmarks.ablation", "--score", vroot, "--n", str(args.n)]
    row = {"variant": v, "name": VARIANTS[v], "train_command": " ".join(train)}
    env = _env(args.parallel)
    for what, cmd in (("train", train), ("score", score)):
        t0 = time.perf_counter()
        with open(os.path.join(vroot, f"{what}.log"), "w") as log:
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        row[f"{what}_s"] = time.perf_counter() - t0
        if rc:
            row["error"] = f"{what} exited {rc}; see {os.path.join(vroot, what + '.log')}"
            return row
    row.update(run_metrics(os.path.join(vroot, "distill")))
    with open(os.path.join(vroot, "score.json")) as f:
        row["domains"] = json.load(f)
    row["mean"] = sum(d["success"] for d in row["domains"].values()) / len(row["domains"])
    return row


def score_main(vroot: str, n: int) -> None:
    """--score VROOT: the held-out success of VROOT/distill, written to VROOT/score.json."""
    from a1jax.distill import report
    result = report.student_on_test(vroot, os.path.join(vroot, "distill"), n=n)
    with open(os.path.join(vroot, "score.json"), "w") as f:
        json.dump(result, f, indent=1)


def table(result: dict) -> str:
    domains = result["domains"]
    head = f"{'variant':<18}" + "".join(f"{d:>26}" for d in domains) + \
        f"{'mean':>7}{'updates':>9}{'rollout tokens':>16}{'train s':>9}{'score s':>9}"
    lines = [head]
    for v in result["variants"]:
        if "error" in v:
            lines.append(f"{v['variant']} {v['name']:<16}  FAILED: {v['error']}")
            continue
        cells = ""
        for d in domains:
            r = v["domains"][d]
            lo, hi = r["success_ci"]
            cells += f"{r['success']:>12.3f} [{lo:.2f},{hi:.2f}]"
        lines.append(f"{v['variant'] + ' ' + v['name']:<18}{cells}{v['mean']:>7.3f}{v['updates']:>9}"
                     f"{v['rollout_tokens']:>16}{v['train_s']:>9.0f}{v['score_s']:>9.0f}")
    lines.append(f"(held-out test tasks: {result['n']} per domain and horizon, greedy decoding, [95% Wilson interval]; "
                 f"every variant from {result['root']}/sft and its teachers, {result['steps']} steps, teacher check "
                 f"off; b distils every domain from teacher_{result['single_teacher']}; rollout tokens: the student's, "
                 f"or the teachers' for c, both for e)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="the main job's workdir root (ROOT/sft, ROOT/teacher_<domain>)")
    p.add_argument("--steps", type=int, default=0, help="stage-3 steps of every variant (default: the recipe's)")
    p.add_argument("--n", type=int, default=128, help="held-out test tasks per domain and horizon")
    p.add_argument("--variants", default="a,b,c,d", help=f"comma-separated, of {VARIANTS}")
    p.add_argument("--out", default="", help="default ROOT/ablation")
    p.add_argument("--parallel", type=int, default=1, help="variants run at once (one per core)")
    p.add_argument("--domains", default="", help="colon-separated (default: the recipe's)")
    p.add_argument("--single-teacher", default="", help="variant b's one teacher (default: the first domain's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="forwarded to every variant as --config.KEY=VALUE (e.g. rollout.max_new_tokens=32)")
    p.add_argument("--score", default="", help=argparse.SUPPRESS)  # internal: score one variant's workdir
    args = p.parse_args(argv)
    if args.score:
        score_main(args.score, args.n)
        return 0
    if not args.root:
        p.error("--root is required (the main job's workdir root, e.g. workdirs/quickstart)")
    args.root = os.path.abspath(args.root)
    args.out = os.path.abspath(args.out or os.path.join(args.root, "ablation"))
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        p.error(f"--variants={args.variants!r}: expected a comma-separated subset of {sorted(VARIANTS)}")
    if args.parallel < 1 or args.n < 1 or args.steps < 0:
        p.error("--parallel and --n must be positive, --steps non-negative")
    config = get_config(f"root={args.root}" + (f",steps={args.steps}" if args.steps else "")
                        + (f",domains={args.domains}" if args.domains else ""))
    domains = list(config.envs.domains)
    args.single_teacher = args.single_teacher or domains[0]
    need = [os.path.join(args.root, "sft")] + [os.path.join(args.root, f"teacher_{d}")
                                               for d in dict.fromkeys([*domains, args.single_teacher])]
    missing = [w for w in need if not os.path.isdir(os.path.join(w, "checkpoints"))]
    if missing:
        p.error(f"--root {args.root}: no training workdir at {missing} (run launch/quickstart.sh first)")
    print(f"ablation: variants {variants} from {args.root}, {config.train.steps} steps each, "
          f"{args.parallel} at a time, into {args.out}", flush=True)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda v: run_variant(v, args), variants))
    result = {"root": args.root, "steps": int(config.train.steps), "n": args.n, "domains": domains,
              "single_teacher": args.single_teacher, "wall_s": time.perf_counter() - t0,
              "command": " ".join(["python -m benchmarks.ablation", *sys.argv[1:]]) if argv is None else
              " ".join(["python -m benchmarks.ablation", *argv]), "variants": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(table(result))
    print(f"wrote {os.path.join(args.out, 'ablation.json')} ({result['wall_s'] / 60:.1f} min)")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    from a1jax import hugepages
    hugepages.ensure()  # as the `a1jax` command runs: large buffers on huge pages
    sys.exit(main())
