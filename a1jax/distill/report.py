"""The recipe's scoreboard: per domain, the student's held-out success before and after distillation, the domain
teacher's success, and the student->teacher reverse KL on the student's own trajectories.

    python -m a1jax.distill.report --root workdirs/quickstart [--domains D1,D2] [--n 128] [--jobs 2] [--fresh]

ROOT holds the recipe's training workdirs: sft/ (stage 1 = the student before), teacher_<domain>/ (stage 2) and
distill/ (stage 3 = the student after). Success comes from the environments' own verifiers on the *test* split
(a1jax/envs/evaluate.py: eval_tasks, score, summarize), with greedy decoding. KL(student || teacher) is exact over
the whole vocabulary, at every position the student generated in those test rollouts (per-token mean), computed in
chunks of positions (never [T, V]). Every success figure carries its 95% Wilson interval. The targets, per domain:
the teacher beats the student by >= 0.2, and after distillation the student reaches >= 0.9 x its teacher and has
gained at least half of the student-teacher gap. Domains that stage 3's teacher check left out (gate.py) are marked.
Writes ROOT/report.json and ROOT/report.png (the figure). The student before and the teachers' figures are cached in
ROOT/report_cache/ by their weights and a1jax's sources (`build_report`): a report after another stage-3 run from
the same stages 0-2 decodes only the new student (`--fresh` scores everything again).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from a1jax import hugepages, model, storage
from a1jax.distill import gate, rollouts as R, settings, teachers as teacher_lib
from a1jax.distill.settings import Rollout
from a1jax.train import vocabulary
from a1jax.envs import registry

TARGET = 0.9
CACHE = "report_cache"  # ROOT/report_cache/: the parts of a report that stage 3 does not change
CACHED = ("before", "before_ci", "teacher", "teacher_ci", "n", "kl_before")


def _hidden_at(params, cfg, batch, flat_idx):
    out = model.forward(params, batch["tokens"], cfg, positions=batch["positions"], segment_ids=batch["segment_ids"],
                        return_logits=False)
    B, T, D = out.hidden.shape
    return out.hidden.reshape(B * T, D)[flat_idx]


@functools.partial(jax.jit, static_argnames=("s_cfg", "t_cfg", "chunk"))
def reverse_kl_at(s_params, s_cfg, t_params, t_cfg, batch, flat_idx, *, chunk: int = 64):
    """KL(student || teacher) over the full vocabulary at flat positions `flat_idx` [M] of a [B, T] batch -> [M]."""
    hs, ht = _hidden_at(s_params, s_cfg, batch, flat_idx), _hidden_at(t_params, t_cfg, batch, flat_idx)

    def kl(student_logits, teacher_hidden):  # a chunk of positions: [1, c, V] and [1, c, D]
        logq = jax.nn.log_softmax(student_logits)
        logp = jax.nn.log_softmax(model.logits_from_hidden(t_params, teacher_hidden, t_cfg))
        return jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1)

    return model.map_logit_chunks(kl, hs[None], model.lm_head_weight(s_params, s_cfg), ht[None], chunk=chunk,
                                  remat=False)[0]


def mean_kl(student, teacher, trajs, tok, seq_len: int, *, rows: int = 8) -> float:
    """Per-token mean KL(student || teacher) over the generated tokens of `trajs`.

    The trajectories are packed first-fit, longest first, into rows of `seq_len` (segments keep them apart, as in
    training), scored `rows` rows per call: one trajectory per row padded a 200-token instruction_following
    trajectory to the 1,632 tokens of a search row."""
    if not trajs:
        return float("nan")
    (s_cfg, s_params), (t_cfg, t_params) = student, teacher
    pieces = sorted((R.rollout_piece(t) for t in trajs), key=lambda p: -len(p["tokens"]))
    packed = R.pack(pieces, rows=len(pieces), seq_len=seq_len, pad_id=tok.pad_id)
    if packed.dropped or packed.truncated:
        raise ValueError(f"mean_kl: {packed.dropped} trajectories dropped and {packed.truncated} cut at seq_len "
                         f"{seq_len}; expected every trajectory to fit a row")
    used = [r for r, held in enumerate(packed.placed) if held]
    total, count = 0.0, 0
    for i in range(0, len(used), rows):
        chunk = used[i:i + rows]
        take = chunk + [chunk[-1]] * (rows - len(chunk))  # a fixed [rows, seq_len] shape; the repeats not counted
        flat = np.flatnonzero(packed.batch["loss_mask"][chunk].reshape(-1) > 0)
        if not flat.size:
            continue
        idx = np.zeros(teacher_lib.position_bucket(flat.size), np.int32)
        idx[:flat.size] = flat
        arrays = {k: jnp.asarray(packed.batch[k][take]) for k in ("tokens", "positions", "segment_ids")}
        kl = np.asarray(reverse_kl_at(s_params, s_cfg, t_params, t_cfg, arrays, jnp.asarray(idx)))[:flat.size]
        total, count = total + float(kl.sum()), count + flat.size
    return total / max(count, 1)


def rollouts_on_test(cfg, params, tok, domain: str, *, n: int, horizons, ro: Rollout, seed: int = 0,
                     options: dict | None = None):
    """Greedy rollouts of (cfg, params) on `n` test tasks per horizon of `domain`: (summary dict, trajectories)."""
    return gate.greedy_success(cfg, params, tok, domain, ro, n=n, horizons=horizons, split="test", seed=seed,
                               options=options)


def wilson(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a success rate (successes of n trials)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _distill_settings(root: str):
    path = os.path.join(root, "distill", "config.json")
    if not storage.isfile(path):
        raise FileNotFoundError(f"{path}: no distillation workdir config (run stage 3 first)")
    config = ml_collections.ConfigDict(storage.read_json(path))
    return config, settings.from_config(config, batch_size=int(config.data.batch_size))


def recipe_settings(root: str) -> tuple[list[str], Rollout]:
    """The distilled domains and the rollout settings of ROOT/distill/config.json, so the scoreboard decodes as the
    recipe did (same budgets, same thinking prompt; greedy sampling is applied on top)."""
    _, s = _distill_settings(root)
    return list(s.envs.domains), s.rollout


def student_on_test(root: str, workdir: str, domains=None, *, n: int = 128, horizons=None) -> dict:
    """Held-out success of one student `workdir` (any training workdir), decoded as the recipe in ROOT/distill did
    (its domains, rollout settings, horizons and environment options by default): {domain: {"success",
    "success_ci" (95% Wilson), "n"}}. benchmarks/ablation.py scores its variants with it."""
    from a1jax.data import tokenizers
    from a1jax.train.checkpoint import load_model
    config, s = _distill_settings(root)
    tok = tokenizers.load(config.data.tokenizer)
    vocabulary.check(workdir, tok, "student")
    cfg, params = load_model(workdir)
    out = {}
    for d in domains or list(s.envs.domains):
        summary, _ = rollouts_on_test(cfg, params, tok, d, n=n, horizons=list(horizons or s.envs.horizons_of(d)),
                                      ro=s.rollout, options=s.envs.options.get(d))
        out[d] = {"success": summary["success_rate"], "n": summary["n"],
                  "success_ci": wilson(summary["success_rate"] * summary["n"], summary["n"])}
    return out


def model_digest(cfg, params) -> str:
    """sha256 of a model's config and every parameter's bytes: what the report's cache is keyed on."""
    h = hashlib.sha256(repr(cfg).encode())
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


@functools.cache
def code_digest() -> str:
    """sha256 of the installed a1jax's Python sources: any change to the model, the environments, their verifiers or
    the rollout code changes it, so the report's cache never serves figures an older a1jax computed."""
    from a1jax.data.tokenizers.base import fingerprint_files
    package = Path(__file__).resolve().parent.parent
    return fingerprint_files(sorted(package.rglob("*.py")), builder="a1jax sources")


def _cache_path(root: str, parts: dict) -> str:
    parts = {**parts, "code": code_digest()}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return os.path.join(root, CACHE, f"{key}.json")


def build_report(root: str, domains=None, *, n: int = 128, horizons=None, ro: Rollout | None = None,
                 cache: bool = True) -> dict:
    """`domains`, `horizons` (per domain) and `ro` default to the recipe's own (ROOT/distill/config.json). Per domain:
    success (with its 95% Wilson interval) of the student before and after distillation and of the domain's teacher,
    the reverse KL before and after, whether stage 3's teacher check let the domain be distilled, and the recipe's
    targets.

    With `cache`, the parts that do not depend on stage 3 (the student before and the teacher: their success and the
    KL before) are kept in ROOT/report_cache/, keyed on both models' weights (`model_digest`), the domain, the tasks,
    the rollout settings and a1jax's own sources (`code_digest`): a report after another stage-3 run from the same
    stages 0-2 scores only the student after. Greedy decoding makes the cached figures the ones a fresh run
    computes."""
    from a1jax.data import tokenizers
    from a1jax.train.checkpoint import load_model
    config, s = _distill_settings(root)
    domains, ro = domains or list(s.envs.domains), ro or s.rollout
    tok = tokenizers.load(config.data.tokenizer)
    paths = {"before": os.path.join(root, "sft"), "after": os.path.join(root, "distill")}
    paths.update({f"teacher_{d}": os.path.join(root, f"teacher_{d}") for d in domains})
    models = {}
    for name, path in paths.items():
        if not storage.isdir(os.path.join(path, "checkpoints")):
            raise FileNotFoundError(f"{path}: no training workdir (run the stage that writes it first)")
        vocabulary.check(path, tok, name)
        models[name] = load_model(path)
    verdicts = gate.distilled(os.path.join(root, "distill")) or {}
    seq_len = ro.max_tokens + ro.max_new_tokens
    report = {"n": n, "horizons": {d: list(horizons or s.envs.horizons_of(d)) for d in domains}, "domains": {},
              "anchored": bool(s.gate.anchor and s.init_from)}
    digests = {name: model_digest(*m) for name, m in models.items() if name != "after"} if cache else {}
    for d in domains:
        row, trajs, seconds = {}, {}, {}
        cache_file = _cache_path(root, {"domain": d, "n": n, "horizons": report["horizons"][d], "ro": ro,
                                        "options": s.envs.options.get(d), "before": digests.get("before"),
                                        "teacher": digests.get(f"teacher_{d}")}) if cache else None
        cached = storage.read_json(cache_file) if cache and storage.isfile(cache_file) else None
        if cached:
            row.update(cached)
        for name in ("after",) if cached else ("before", "after", f"teacher_{d}"):
            key = "teacher" if name.startswith("teacher") else name
            start = time.perf_counter()
            summary, trajs[name] = rollouts_on_test(*models[name], tok, d, n=n, horizons=report["horizons"][d], ro=ro,
                                                    options=s.envs.options.get(d))
            seconds[f"rollouts_{key}"] = time.perf_counter() - start
            row[key] = summary["success_rate"]
            row[f"{key}_ci"] = wilson(summary["success_rate"] * summary["n"], summary["n"])
            row["n"] = summary["n"]
        for key in ("after",) if cached else ("before", "after"):
            start = time.perf_counter()
            row[f"kl_{key}"] = mean_kl(models[key], models[f"teacher_{d}"], trajs[key], tok, seq_len)
            seconds[f"kl_{key}"] = time.perf_counter() - start
        if cache and not cached:
            storage.makedirs(os.path.dirname(cache_file))
            storage.write_atomic(cache_file, json.dumps({k: row[k] for k in CACHED}))
        row["seconds"] = seconds  # wall time of each part computed here (compiles included)
        row["cached"] = bool(cached)
        row["ratio"] = row["after"] / row["teacher"] if row["teacher"] > 0 else float("nan")
        row["distilled"] = verdicts.get(d, {}).get("distilled", True)
        row["gate"] = verdicts.get(d)
        gap = row["teacher"] - row["before"]
        row["targets"] = {"teacher_beats_student_by_0.2": bool(gap >= 0.2),
                          "after_ge_0.9_teacher": bool(row["teacher"] > 0 and row["after"] >= TARGET * row["teacher"]),
                          "closes_half_the_gap": bool(gap > 0 and row["after"] - row["before"] >= 0.5 * gap)}
        row["meets_target"] = all(row["targets"].values())
        report["domains"][d] = row
    return report


def build_report_parallel(root: str, domains=None, *, n: int, horizons=None, jobs: int = 1,
                          cache: bool = True) -> dict:
    """`build_report` with the domains spread over `jobs` processes (spawned: each has its own jax)."""
    domains = domains or recipe_settings(root)[0]
    if jobs <= 1 or len(domains) <= 1:
        return build_report(root, domains, n=n, horizons=horizons, cache=cache)
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(min(jobs, len(domains)),
                                                mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(functools.partial(_one_domain, root, n=n, horizons=horizons, cache=cache), domains))
    report = {"n": n, "horizons": {}, "domains": {}, "anchored": parts[0]["anchored"]}
    for part in parts:
        report["horizons"].update(part["horizons"])
        report["domains"].update(part["domains"])
    return report


def _one_domain(root: str, domain: str, *, n: int, horizons, cache: bool) -> dict:
    return build_report(root, [domain], n=n, horizons=horizons, cache=cache)


def _ci(r: dict, key: str) -> str:
    lo, hi = r[f"{key}_ci"]
    return f"{r[key]:.3f} [{lo:.2f},{hi:.2f}]"


def table(report: dict) -> str:
    lines = [f"{'domain':<22}{'distilled':>9}  {'student before':>20}  {'student after':>20}  {'teacher':>20}"
             f"{'after/teacher':>14}{'KL before':>10}{'KL after':>9}  targets"]
    for d, r in report["domains"].items():
        t = r["targets"]
        marks = " ".join(f"{name}:{'met' if ok else 'NOT met'}" for name, ok in
                         (("gap>=0.2", t["teacher_beats_student_by_0.2"]), ("after>=0.9t", t["after_ge_0.9_teacher"]),
                          ("half-gap", t["closes_half_the_gap"])))
        lines.append(f"{d:<22}{'yes' if r['distilled'] else 'NO':>9}  {_ci(r, 'before'):>20}  {_ci(r, 'after'):>20}  "
                     f"{_ci(r, 'teacher'):>20}{r['ratio']:>14.2f}{r['kl_before']:>10.3f}{r['kl_after']:>9.3f}  {marks}")
    horizons = ", ".join(f"{d} {h}" for d, h in report["horizons"].items())
    lines.append(f"(held-out test tasks: {report['n']} per domain and horizon ({horizons}), greedy decoding; "
                 f"[95% Wilson interval]; KL(student || teacher) per generated token, full vocabulary, on the student's "
                 f"own test trajectories; targets: teacher - before >= 0.2, after >= {TARGET:.0%} of teacher, "
                 f"after - before >= half the gap)")
    left_out = [d for d, r in report["domains"].items() if not r["distilled"]]
    if left_out:
        anchored = " (each distilled toward the student's own starting weights instead: config.gate.anchor)" \
            if report.get("anchored") else ""
        lines.append(f"left out of distillation by the teacher check (validation split): {', '.join(left_out)}"
                     f"{anchored}")
    timed = {d: r["seconds"] for d, r in report["domains"].items() if "seconds" in r}
    if timed:
        lines.append("seconds: " + "; ".join(f"{d} " + ", ".join(f"{k} {v:.0f}" for k, v in t.items())
                                              for d, t in timed.items()))
    cached = [d for d, r in report["domains"].items() if r.get("cached")]
    if cached:
        lines.append(f"student before and teacher from {CACHE}/ (same weights, tasks and settings): "
                     f"{', '.join(cached)}")
    return "\n".join(lines)


def figure(report: dict, path: str) -> None:
    """A PNG beside report.json: per domain, student before, student after and teacher, with 95% Wilson intervals."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    domains = list(report["domains"])
    fig, ax = plt.subplots(figsize=(1.8 + 2.2 * len(domains), 3.6), dpi=120)
    series = (("before", "student before", "#9e9e9e"), ("after", "student after", "#1f77b4"),
              ("teacher", "teacher", "#ff7f0e"))
    width = 0.26
    for j, (key, label, colour) in enumerate(series):
        xs = np.arange(len(domains)) + (j - 1) * width
        ys = [report["domains"][d][key] for d in domains]
        lo = [ys[i] - report["domains"][d][f"{key}_ci"][0] for i, d in enumerate(domains)]
        hi = [report["domains"][d][f"{key}_ci"][1] - ys[i] for i, d in enumerate(domains)]
        ax.bar(xs, ys, width, label=label, color=colour, yerr=[lo, hi], capsize=3, ecolor="black")
    ax.set_xticks(np.arange(len(domains)),
                  [d + ("" if report["domains"][d]["distilled"] else "\n(not distilled)") for d in domains])
    ax.set_ylim(0, 1)
    ax.set_ylabel("success on held-out test tasks")
    ax.set_title(f"Multi-teacher on-policy distillation, tiny recipe ({report['n']} test tasks per domain, 95% CI)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    storage.write_atomic(path, buf.getvalue())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the recipe's workdir root (sft/, teacher_<d>/, distill/)")
    p.add_argument("--domains", default="", help="comma-separated (default: the domains ROOT/distill distilled)")
    p.add_argument("--n", type=int, default=128, help="test tasks per domain and horizon")
    p.add_argument("--horizons", default="", help="comma-separated, for every domain (default: the recipe's own)")
    p.add_argument("--jobs", type=int, default=1, help="domains scored at once, one process each (one per core)")
    p.add_argument("--fresh", action="store_true",
                   help=f"score the student before and the teachers again instead of reading ROOT/{CACHE}/")
    args = p.parse_args(argv)
    domains = [d for d in args.domains.split(",") if d] or None
    bad = [d for d in domains or () if d not in registry.names()]
    if bad:
        p.error(f"--domains: unknown domain(s) {bad}; known: {registry.names()}")
    horizons = tuple(int(h) for h in args.horizons.split(",") if h) or None
    if args.jobs < 1:
        p.error(f"--jobs={args.jobs}: expected a positive integer")
    report = build_report_parallel(args.root, domains, n=args.n, horizons=horizons, jobs=args.jobs,
                                   cache=not args.fresh)
    storage.write_atomic(os.path.join(args.root, "report.json"), json.dumps(report, indent=1))
    figure(report, os.path.join(args.root, "report.png"))
    print(table(report))
    print(f"wrote {os.path.join(args.root, 'report.json')} and {os.path.join(args.root, 'report.png')}")
    return 0


if __name__ == "__main__":
    hugepages.ensure()  # as the `a1jax` command runs: large buffers on huge pages (its workers inherit it)
    sys.exit(main())
