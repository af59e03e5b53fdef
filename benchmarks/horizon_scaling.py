"""The horizon-scaling experiment: students trained by SFT on demonstrations of different horizons, training tokens
matched, evaluated on held-out tasks at several eval horizons (experiments/horizon_scaling.py says what each student
is).

    python -m benchmarks.horizon_scaling [--root workdirs/horizon] [--quick] [--train-horizons 1,4,16]
                                         [--eval-horizons 1,2,4,8,16] [--n 64] [--tokens N] [--warmup-steps 400]
                                         [--domains search,scientific_agents] [--fixed]

Steps, each skipped when its output is already there (run again to resume; delete ROOT to start over):
  1. demonstrations: ROOT/demos/<domain>_h<h>.jsonl for every horizon a student trains on (every power of two up to
     its training horizon H, and H; --fixed: H alone), enough for the token budget without repeating a record;
  2. the shared initialisation: ROOT/warmup, the copy warm-up of a freshly initialised tiny model (`a1jax warmup`);
  3. tokens matched: the steps each student needs for --tokens non-padding training tokens, counted on its own packed
     batches (the training pipeline itself, same seed; rows of 1 x 4,096);
  4. one student per H: `a1jax train --config experiments/horizon_scaling.py:root=ROOT,h=H,steps=S --workdir
     ROOT/h{H} --init_from ROOT/warmup`, one at a time;
  5. evaluation: each student, greedy, on --n held-out test tasks per domain and eval horizon, with budgets sized to
     the horizon (max turns h + 2, max tokens 700 + 260 (h + 1)); trajectories that ended on a budget instead of an
     answer are counted as truncated and reported.
Writes ROOT/horizon_scaling.json (every figure and the settings) and ROOT/horizon_scaling.png (success against eval
horizon, one line per training horizon, 95% Wilson bands, one panel per domain) and prints the table, with the
smallest difference between two students that the intervals can resolve at --n tasks a point.
`--quick` is the smoke size CI runs (training horizons 1 and 2, eval horizons 1 and 2, 2 tasks a point, a few steps;
tests/test_horizon_scaling.py runs it with --inline, every stage in one process).
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from a1jax import hugepages, storage
from a1jax.train import warmup
from benchmarks.ablation import SINGLE_THREAD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(REPO, "experiments", "horizon_scaling.py")
TRUNCATED = ("context", "token_budget", "max_new_tokens", "max_turns")  # agent.py terminations that are not answers
TOKENS = 2_048_000  # 500 full rows of 4,096 (1,024,000 until 2026-12-07: no mixture student was competent)


def experiment():
    spec = importlib.util.spec_from_file_location("horizon_scaling_experiment", EXPERIMENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _csv_ints(text: str, flag: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag}={text!r}: expected comma-separated integers") from None
    if not out or min(out) < 1:
        raise SystemExit(f"{flag}={text!r}: expected horizons >= 1")
    return out


def _env() -> dict:
    env = dict(os.environ)
    if "intra_op_parallelism_threads" not in env.get("XLA_FLAGS", ""):
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SINGLE_THREAD).strip()
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _run(argv: list[str], log_path: str, inline: bool) -> None:
    """Runs `a1jax ARGV`: in its own single-threaded XLA process, its output into `log_path`, or (`inline`) in this
    process; a failure stops the experiment, naming the command (and the log)."""
    if inline:
        from a1jax import cli
        rc, where = cli.main(argv), "above"
    else:
        with open(log_path, "a") as log:
            rc = subprocess.run([sys.executable, "-m", "a1jax.cli", *argv], cwd=REPO, env=_env(), stdout=log,
                                stderr=subprocess.STDOUT).returncode
        where = f"log {log_path}:\n" + open(log_path).read()[-3000:]
    if rc:
        raise SystemExit(f"a1jax {' '.join(argv)} failed (exit {rc}); {where}")


def write_demos(root: str, exp, horizons, tokens: int, domains=None) -> None:
    """ROOT/demos/<domain>_h<H>.jsonl for every horizon in `horizons`, with enough records that no student repeats
    one (each file could fill the whole budget alone)."""
    from a1jax.data import chat, tokenizers
    from a1jax.envs import demos, registry
    tok = tokenizers.load(exp.tiny.TOKENIZER)
    for h in horizons:
        for d in domains or exp.DOMAINS:
            path = exp.demos_path(root, d, h)
            if os.path.exists(path):
                continue
            env = registry.get(d)
            sample = [env.solve(t) for t in env.tasks("train", 0, n=4, horizon=h)]
            length = np.mean([len(tok.encode(chat.render(r["messages"], r.get("tools")))) for r in sample])
            n = int(math.ceil(1.1 * tokens / length)) + 8
            os.makedirs(os.path.dirname(path), exist_ok=True)
            written = demos.write_demonstrations(path + ".tmp", d, n=n, horizon=h)
            os.replace(path + ".tmp", path)
            print(f"  demos {d} h={h}: {written} records, about {length:.0f} tokens each", flush=True)


def steps_for_tokens(config, tokens: int, max_steps: int = 100_000) -> dict:
    """The steps that reach `tokens` non-padding training tokens on `config`'s own packed batches (the training
    pipeline, same seed): {"steps", "tokens", "supervised_tokens", "fill"} (fill: non-padding share of the rows)."""
    from a1jax import stages
    from a1jax.data.pipeline import make_iterator
    data = stages.validate(config).data
    it = make_iterator(data)
    seen = supervised = steps = 0
    while seen < tokens and steps < max_steps:
        batch = next(it)
        seen += int((batch["segment_ids"] > 0).sum())
        supervised += int(batch["loss_mask"].sum())
        steps += 1
    return {"steps": steps, "tokens": seen, "supervised_tokens": supervised,
            "fill": seen / (steps * data.batch_size * data.seq_len)}


def evaluate_student(workdir: str, exp, domains, horizons, n: int, seed: int = 0) -> dict:
    """{domain: {h: {"n", "successes", "success", "ci", "truncated", "terminations"}}}: greedy, test split."""
    from a1jax.data import tokenizers
    from a1jax.distill.report import wilson
    from a1jax.envs import evaluate
    from a1jax.rollout.agent import RolloutConfig
    from a1jax.rollout.engine import make_engine
    from a1jax.rollout.sampling import SamplingParams
    from a1jax.train.checkpoint import load_model
    tok = tokenizers.load(exp.tiny.TOKENIZER)
    cfg, params = load_model(workdir)
    out = {d: {} for d in domains}
    for h in horizons:
        b = exp.eval_budgets(h)
        engine = make_engine(cfg, params, tok, sampling=SamplingParams.greedy(), batch_size=exp.EVAL_BATCH,
                             max_len=b["max_len"], max_new_tokens=b["max_new_tokens"])
        result = evaluate.evaluate_engine(
            engine, tok, domains=domains, n=n, horizons=[h], seed=seed,
            rollout_cfg=RolloutConfig(max_turns=b["max_turns"], max_tokens=b["max_tokens"], enable_thinking="model"))
        for d in domains:
            rows = [r for r in result["trajectories"] if r["domain"] == d]
            wins = sum(r["success"] for r in rows)
            ends = collections.Counter(r["termination"] for r in rows)
            out[d][str(h)] = {"n": len(rows), "successes": wins, "success": wins / max(len(rows), 1),
                              "ci": list(wilson(wins, len(rows))),
                              "truncated": sum(ends[k] for k in TRUNCATED), "terminations": dict(ends)}
    return out


def resolvable_difference(n: int, p: float = 0.5, z_alpha: float = 1.959964, z_power: float = 0.841621) -> float:
    """The smallest difference between two success rates near p, n trials each, that a two-sided test at 5% detects
    with 80% power (normal approximation)."""
    return (z_alpha + z_power) * math.sqrt(2 * p * (1 - p) / n)


def table(result: dict) -> str:
    hs = result["eval_horizons"]
    width = max(len(d) for d in result["domains"]) + 1
    lines = [f"{'domain':<{width}}{'train h':>8}{'steps':>7}{'tokens':>11}  " + "".join(f"{'eval h=' + str(h):>19}"
                                                                                  for h in hs)]
    for d in result["domains"]:
        for s in result["students"]:
            cells = []
            for h in hs:
                c = s["eval"][d][str(h)]
                cells.append(f"{c['success']:.2f} [{c['ci'][0]:.2f},{c['ci'][1]:.2f}]"
                             + ("*" if c["truncated"] else " "))
            lines.append(f"{d:<{width}}{trained_at(s):>8}{s['steps']:>7}{s['tokens']:>11,}  "
                         + "".join(f"{x:>19}" for x in cells))
    lines.append("train h: =H the student saw horizon H alone, <=H every power of two up to H (equal record weights)")
    lines.append(f"success on {result['n']} held-out test tasks per cell, greedy, 95% Wilson interval; * some "
                 f"trajectories ended on a budget, not an answer (horizon_scaling.json: truncated, terminations)")
    lines.append(f"two students differ detectably (5% test, 80% power) by about "
                 f"{resolvable_difference(result['n']):.2f} near 0.5 success, "
                 f"{resolvable_difference(result['n'], 0.1):.2f} near 0.1")
    return "\n".join(lines)


def trained_at(s: dict) -> str:
    """"=4" (student s saw horizon 4 alone) or "<=4" (every power of two up to 4)."""
    return f"={s['h']}" if len(s.get("mixture", [s["h"]])) == 1 else f"<={s['h']}"


def figure(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    domains, hs = result["domains"], result["eval_horizons"]
    fig, axes = plt.subplots(1, len(domains), figsize=(4.2 * len(domains), 3.4), dpi=120, squeeze=False)
    for ax, d in zip(axes[0], domains):
        for s in result["students"]:
            ys = [s["eval"][d][str(h)]["success"] for h in hs]
            lo = [s["eval"][d][str(h)]["ci"][0] for h in hs]
            hi = [s["eval"][d][str(h)]["ci"][1] for h in hs]
            line, = ax.plot(hs, ys, marker="o", label=f"trained at h{trained_at(s)}")
            ax.fill_between(hs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_xticks(hs, [str(h) for h in hs])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("eval horizon (dependent tool calls)")
        ax.set_ylabel("success (held-out test)")
        ax.set_title(f"{d}, {result['n']} tasks a point, tokens matched", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    storage.write_atomic(path, buf.getvalue())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.path.join(REPO, "workdirs", "horizon"))
    p.add_argument("--quick", action="store_true", help="the CI smoke size")
    p.add_argument("--train-horizons", default="")
    p.add_argument("--eval-horizons", default="")
    p.add_argument("--n", type=int, default=0, help="held-out test tasks per domain and eval horizon")
    p.add_argument("--tokens", type=int, default=0, help="non-padding training tokens per student")
    p.add_argument("--domains", default="", help="comma-separated (default: experiments/horizon_scaling.py DOMAINS)")
    p.add_argument("--fixed", action="store_true", help="each student trains on its own horizon alone (the design "
                   "measured on 2026-12-06), not on every power of two up to it")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--inline", action="store_true", help="run the warm-up and the students in this process, on one "
                   "device (tests; by default each runs in its own process with one XLA thread)")
    args = p.parse_args(argv)
    if not args.inline:  # the evaluation runs in this process: CPU (also where libtpu is installed), one XLA thread
        os.environ.update(_env())
    exp = experiment()
    q = args.quick
    train_hs = _csv_ints(args.train_horizons, "--train-horizons") if args.train_horizons else list(
        exp.QUICK["train_horizons"] if q else exp.TRAIN_HORIZONS)
    eval_hs = _csv_ints(args.eval_horizons, "--eval-horizons") if args.eval_horizons else list(
        exp.QUICK["eval_horizons"] if q else exp.EVAL_HORIZONS)
    n = args.n or (exp.QUICK["eval_tasks"] if q else exp.EVAL_TASKS)
    tokens = args.tokens or (3 * exp.QUICK["seq_len"] if q else TOKENS)
    warmup_steps = args.warmup_steps or (3 if q else warmup.CopySettings().steps)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()] or list(exp.DOMAINS)
    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    arg = f"root={root},domains={':'.join(domains)}" + (",quick" if q else "") + (",fixed" if args.fixed else "")
    started = time.time()
    log = os.path.join(root, "log.txt")

    print("1. demonstrations", flush=True)
    write_demos(root, exp, sorted({x for h in train_hs for x in exp.mixture(h, args.fixed)}), tokens, domains)
    print(f"2. shared initialisation: copy warm-up ({warmup_steps} steps)", flush=True)
    warm = os.path.join(root, "warmup")
    if not os.path.exists(os.path.join(warm, "warmup.json")):
        shutil.rmtree(warm, ignore_errors=True)  # an interrupted warm-up starts over
        _run(["warmup", "--config", f"{EXPERIMENT}:{arg}", "--out", warm, "--steps", str(warmup_steps)], log,
             args.inline)
    students = []
    for h in train_hs:
        plan = steps_for_tokens(exp.get_config(f"{arg},h={h}"), tokens)
        print(f"3-4. student h={h}: {plan['steps']} steps for {plan['tokens']:,} tokens "
              f"({plan['supervised_tokens']:,} supervised, rows {plan['fill']:.0%} full)", flush=True)
        workdir = os.path.join(root, f"h{h}")
        t0 = time.time()
        spec = f"{EXPERIMENT}:{arg},h={h},steps={plan['steps']}"
        if args.inline:  # on one device: a test process may hold several virtual ones, and the batch is 1 row
            import jax
            from a1jax import stages
            from a1jax.train import experiment as experiment_lib, loop
            loop.train(stages.validate(experiment_lib.load(spec)), workdir, init_from=warm, devices=jax.devices()[:1])
        else:
            _run(["train", "--config", spec, "--workdir", workdir, "--init_from", warm], log, False)
        students.append({"h": h, "mixture": list(exp.mixture(h, args.fixed)), "workdir": workdir, **plan,
                         "train_s": round(time.time() - t0, 1)})
    for s in students:
        t0 = time.time()
        s["eval"] = evaluate_student(s["workdir"], exp, domains, eval_hs, n)
        s["eval_s"] = round(time.time() - t0, 1)
        print(f"5. evaluated h={s['h']} ({s['eval_s']:.0f}s)", flush=True)
    result = {"domains": domains, "train_horizons": train_hs, "fixed": args.fixed, "eval_horizons": eval_hs, "n": n,
              "tokens_per_student": tokens, "warmup_steps": warmup_steps, "quick": q, "students": students,
              "resolvable_difference": {"p=0.5": resolvable_difference(n), "p=0.1": resolvable_difference(n, 0.1)},
              "wall_s": round(time.time() - started, 1)}
    storage.write_atomic(os.path.join(root, "horizon_scaling.json"), json.dumps(result, indent=1))
    figure(result, os.path.join(root, "horizon_scaling.png"))
    print(table(result))
    print(f"wrote {root}/horizon_scaling.json and {root}/horizon_scaling.png ({result['wall_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    hugepages.ensure()  # as the `a1jax` command runs: large buffers on huge pages
    sys.exit(main())
