"""The recipe's scoreboard: per domain, the student's held-out success before and after distillation, the domain
teacher's success, and the student->teacher reverse KL on the student's own trajectories.

    python -m a1jax.distill.report --root workdirs/quickstart [--domains D1,D2] [--n 32]

ROOT holds the recipe's training workdirs: sft/ (stage 1 = the student before), teacher_<domain>/ (stage 2) and
distill/ (stage 3 = the student after). Success comes from the environments' own verifiers on the *test* split
(a1jax/envs/evaluate.py: eval_tasks, score, summarize), with greedy decoding. KL(student || teacher) is exact over
the whole vocabulary, at every position the student generated in those test rollouts (per-token mean), computed in
chunks of positions (never [T, V]). The target (issue 10): after >= 0.9 x teacher in every distilled domain.
Writes ROOT/report.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from a1jax import model
from a1jax.distill import rollouts as R, settings
from a1jax.distill.settings import Rollout
from a1jax.envs import evaluate, registry
from a1jax.rollout.sampling import SamplingParams

TARGET = 0.9


def _hidden_at(params, cfg, batch, flat_idx):
    out = model.forward(params, batch["tokens"], cfg, positions=batch["positions"], segment_ids=batch["segment_ids"],
                        return_logits=False)
    B, T, D = out.hidden.shape
    return out.hidden.reshape(B * T, D)[flat_idx]


@functools.partial(jax.jit, static_argnames=("s_cfg", "t_cfg", "chunk"))
def reverse_kl_at(s_params, s_cfg, t_params, t_cfg, batch, flat_idx, *, chunk: int = 64):
    """KL(student || teacher) over the full vocabulary at flat positions `flat_idx` [M] of a [B, T] batch -> [M]."""
    hs, ht = _hidden_at(s_params, s_cfg, batch, flat_idx), _hidden_at(t_params, t_cfg, batch, flat_idx)
    ws, wt = model.lm_head_weight(s_params, s_cfg), model.lm_head_weight(t_params, t_cfg)
    M = hs.shape[0]
    n = -(-M // chunk)
    pad = lambda h: jnp.pad(h, ((0, n * chunk - M), (0, 0))).reshape(n, chunk, -1)

    def one(args):
        a, b = args
        logq = jax.nn.log_softmax(jnp.einsum("cd,dv->cv", a, ws.astype(a.dtype), preferred_element_type=jnp.float32))
        logp = jax.nn.log_softmax(jnp.einsum("cd,dv->cv", b, wt.astype(b.dtype), preferred_element_type=jnp.float32))
        return jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1)

    return jax.lax.map(one, (pad(hs), pad(ht))).reshape(-1)[:M]


def mean_kl(student, teacher, trajs, tok, seq_len: int) -> float:
    """Per-token mean KL(student || teacher) over the generated tokens of `trajs` (one trajectory per row)."""
    if not trajs:
        return float("nan")
    (s_cfg, s_params), (t_cfg, t_params) = student, teacher
    total, count = 0.0, 0
    for i in range(0, len(trajs), 8):
        packed = R.pack([R.rollout_piece(t) for t in trajs[i:i + 8]], rows=8, seq_len=seq_len, pad_id=tok.pad_id,
                        one_per_row=True)
        flat = np.flatnonzero(packed.batch["loss_mask"].reshape(-1) > 0)
        if not flat.size:
            continue
        idx = np.zeros(-(-flat.size // 256) * 256, np.int32)
        idx[:flat.size] = flat
        arrays = {k: jnp.asarray(packed.batch[k]) for k in ("tokens", "positions", "segment_ids")}
        kl = np.asarray(reverse_kl_at(s_params, s_cfg, t_params, t_cfg, arrays, jnp.asarray(idx)))[:flat.size]
        total, count = total + float(kl.sum()), count + flat.size
    return total / max(count, 1)


def rollouts_on_test(cfg, params, tok, domain: str, *, n: int, horizons, ro: Rollout, seed: int = 0):
    """Greedy rollouts of (cfg, params) on `n` test tasks per horizon of `domain`: (summary dict, trajectories)."""
    env = registry.get(domain)
    tasks = evaluate.eval_tasks(env, n=n, horizons=horizons, seed=seed, split="test")
    ro = dataclasses.replace(ro, max_len=min(ro.max_len, cfg.max_position_embeddings))  # the engine's bound
    engine = R.make_engine(cfg, params, tok, ro, sampling=SamplingParams.greedy())
    trajs = R.roll_out(engine, tok, [(t, env) for t in tasks], ro, seed=seed, domain_ids={domain: 0})
    rows = evaluate.score(((t.task, t.record) for t in trajs), {t.id: env for t in tasks})
    return evaluate.summarize(rows)[domain], trajs


def recipe_settings(root: str) -> tuple[list[str], Rollout]:
    """The distilled domains and the rollout settings of ROOT/distill/config.json, so the scoreboard decodes as the
    recipe did (same budgets, same thinking prompt; greedy sampling is applied on top)."""
    path = os.path.join(root, "distill", "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no distillation workdir config (run stage 3 first)")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    s = settings.from_config(config, batch_size=int(config.data.batch_size))
    return list(s.envs.domains), s.rollout


def build_report(root: str, domains=None, *, n: int = 32, horizons=(1,), ro: Rollout | None = None) -> dict:
    """`domains` and `ro` default to the recipe's own (`recipe_settings`)."""
    from a1jax.data import tokenizers
    from a1jax.rollout.cli import load_model
    if domains is None or ro is None:
        recipe_domains, recipe_ro = recipe_settings(root)
        domains, ro = domains or recipe_domains, ro or recipe_ro
    tok = tokenizers.load("qwen3_5")
    paths = {"before": os.path.join(root, "sft"), "after": os.path.join(root, "distill")}
    paths.update({f"teacher_{d}": os.path.join(root, f"teacher_{d}") for d in domains})
    models = {}
    for name, path in paths.items():
        if not os.path.isdir(os.path.join(path, "checkpoints")):
            raise FileNotFoundError(f"{path}: no training workdir (run the stage that writes it first)")
        models[name] = load_model(path)
    seq_len = ro.max_tokens + ro.max_new_tokens
    report = {"n": n, "horizons": list(horizons), "domains": {}}
    for d in domains:
        row, trajs = {}, {}
        for name in ("before", "after", f"teacher_{d}"):
            summary, trajs[name] = rollouts_on_test(*models[name], tok, d, n=n, horizons=horizons, ro=ro)
            row[name.split("_")[0] if name.startswith("teacher") else name] = summary["success_rate"]
        row["kl_before"] = mean_kl(models["before"], models[f"teacher_{d}"], trajs["before"], tok, seq_len)
        row["kl_after"] = mean_kl(models["after"], models[f"teacher_{d}"], trajs["after"], tok, seq_len)
        row["ratio"] = row["after"] / row["teacher"] if row["teacher"] > 0 else float("nan")
        row["meets_target"] = bool(row["teacher"] > 0 and row["after"] >= TARGET * row["teacher"])
        report["domains"][d] = row
    return report


def table(report: dict) -> str:
    lines = [f"{'domain':<20}{'student before':>15}{'student after':>14}{'teacher':>9}{'after/teacher':>14}"
             f"{'KL(s||t) before':>16}{'after':>8}  target (after >= {TARGET:.0%} of teacher)"]
    for d, r in report["domains"].items():
        lines.append(f"{d:<20}{r['before']:>15.3f}{r['after']:>14.3f}{r['teacher']:>9.3f}{r['ratio']:>14.2f}"
                     f"{r['kl_before']:>16.3f}{r['kl_after']:>8.3f}  {'met' if r['meets_target'] else 'NOT met'}")
    lines.append(f"(held-out test tasks: {report['n']} per domain and horizon {report['horizons']}, greedy decoding; "
                 f"KL per generated token, full vocabulary, on the student's own test trajectories)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="the recipe's workdir root (sft/, teacher_<d>/, distill/)")
    p.add_argument("--domains", default="", help="comma-separated (default: the domains ROOT/distill distilled)")
    p.add_argument("--n", type=int, default=32, help="test tasks per domain and horizon")
    p.add_argument("--horizons", default="1")
    args = p.parse_args(argv)
    domains = [d for d in args.domains.split(",") if d] or None
    bad = [d for d in domains or () if d not in registry.names()]
    if bad:
        p.error(f"--domains: unknown domain(s) {bad}; known: {registry.names()}")
    horizons = tuple(int(h) for h in args.horizons.split(","))
    report = build_report(args.root, domains, n=args.n, horizons=horizons)
    with open(os.path.join(args.root, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
