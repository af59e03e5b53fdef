"""Stage 3's teacher check: never distil from a teacher that is worse than the student.

Before the first distillation step, each local teacher and the student roll out greedily on the same `tasks`
*validation* tasks of the teacher's domain (the "valid" split: disjoint from the train tasks the loops draw and from
the test tasks the report scores). A domain whose teacher does not beat the student by more than `margin` success is
left out of distillation, unless `config.gate.keep` names it (or is "all"). An HTTP teacher cannot be rolled out
here: it is kept, and the verdict says so. The verdicts go to WORKDIR/gate.json, so a resumed run distils the same
domains, and the report says which domains were distilled. With `anchor` (the default) a left-out domain keeps its
place in each step, its teacher replaced by the frozen starting weights of the student (opd.py, `anchor_teacher`).

    config.gate = dict(tasks=32, margin=0.0, keep=[], anchor=True, anchor_tasks=0)   # tasks=0: no check
    (anchor_tasks: the train tasks an anchored domain draws per rollout batch; 0: config.envs.tasks_per_domain)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

from a1jax import storage
from a1jax.distill.settings import Gate  # noqa: F401 (gate.Gate: the config section this module checks)

log = logging.getLogger("a1jax.distill")
FILE = "gate.json"


def greedy_success(cfg, params, tok, domain: str, ro, *, n: int, horizons, split: str, seed: int = 0,
                   options: dict | None = None):
    """Greedy rollouts of (cfg, params) on `n` tasks per horizon of `domain`'s `split` (environment `options`):
    (summary, trajectories)."""
    from a1jax.distill import rollouts as R
    from a1jax.envs import evaluate, registry
    from a1jax.rollout.sampling import SamplingParams
    env = registry.get(domain, **dict(options or {}))
    tasks = evaluate.eval_tasks(env, n=n, horizons=horizons, seed=seed, split=split)
    ro = dataclasses.replace(ro, max_len=min(ro.max_len, cfg.max_position_embeddings))  # the engine's bound
    engine = R.make_engine(cfg, params, tok, ro, sampling=SamplingParams.greedy())
    trajs = R.roll_out(engine, tok, [(t, env) for t in tasks], ro, seed=seed, domain_ids={domain: 0})
    rows = evaluate.score(((t.task, t.record) for t in trajs), {t.id: env for t in tasks})
    return evaluate.summarize(rows)[domain], trajs


def verdict(domain: str, student: float | None, teacher: float | None, gate: Gate) -> dict:
    """One domain's decision: distilled or not, and why."""
    forced = domain in gate.keep or "all" in gate.keep
    if teacher is None:
        return {"distilled": True, "student": student, "teacher": None,
                "reason": "not checked (the teacher is not a local workdir)"}
    beats = teacher > student + gate.margin
    reason = (f"teacher {teacher:.3f} > student {student:.3f} + margin {gate.margin}" if beats else
              f"teacher {teacher:.3f} does not beat student {student:.3f} + margin {gate.margin}"
              + ("; kept because config.gate.keep names it" if forced else ""))
    return {"distilled": bool(beats or forced), "student": student, "teacher": teacher, "reason": reason}


def check(workdir: str, student_cfg, student_params, tok, teachers: dict, envs, ro, gate: Gate) -> dict:
    """{domain: verdict} for `teachers` ({domain: TeacherSpec}); read from WORKDIR/gate.json when a run already
    decided, else measured and written there."""
    path = os.path.join(workdir, FILE)
    if storage.exists(path):
        saved = storage.read_json(path)
        if set(saved["domains"]) == set(teachers):
            return saved["domains"]
    out = {}
    for domain, spec in teachers.items():
        if gate.tasks <= 0:
            out[domain] = {"distilled": True, "student": None, "teacher": None, "reason": "check off (gate.tasks=0)"}
            continue
        s = t = None
        if spec.workdir:
            from a1jax.train.checkpoint import load_trained_params
            from a1jax import model
            kw = dict(n=gate.tasks, horizons=envs.horizons_of(domain), split="valid", seed=gate.seed,
                      options=envs.options.get(domain))
            s = greedy_success(student_cfg, student_params, tok, domain, ro, **kw)[0]["success_rate"]
            t_cfg, t_params = load_trained_params(spec.workdir)
            t = greedy_success(t_cfg, model.unbox(t_params), tok, domain, ro, **kw)[0]["success_rate"]
        out[domain] = verdict(domain, s, t, gate)
    storage.write_atomic(path, json.dumps({"tasks": gate.tasks, "margin": gate.margin, "domains": out}, indent=1))
    return out


def distilled(workdir: str) -> dict | None:
    """The verdicts a stage-3 run recorded (None: it ran no check)."""
    path = os.path.join(workdir, FILE)
    if not storage.exists(path):
        return None
    return storage.read_json(path)["domains"]
