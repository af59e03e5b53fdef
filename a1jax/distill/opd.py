"""Stage 3, the impure outer loop: multi-teacher, domain-routed on-policy distillation (docs/spec/recipe.md §6.4).

Per step:
  1. draw a domain-balanced batch of train tasks (config.envs.tasks_per_domain per domain; never the test split);
  2. roll the student out with the rollout engine, each task in its own environment (a1jax.envs Session);
  3. pack the trajectories into fixed [B, T] rows, B / n_domains rows per domain (loss on the generated tokens,
     behaviour log-probs shifted onto their positions);
  4. route each domain's rows to that domain's teacher, which scores the exact token ids in one forward pass
     (teachers.py; a teacher with another tokenizer is aligned through vocab.py; a failed teacher marks its rows
     invalid and is counted);
  5. the jitted, pure `opd_step(state, batch, teacher_targets)` (a1jax/distill/steps.py);
  6. push the new weights to the engine.

config.distill.policy="off" (an ablation: sequence-level KD) replaces steps 2 and 4: each domain's teacher rolls out
that step's tasks (the same tasks, the same rollout settings) and the student takes the same number of updates, by
the same `opd_step`, on the teacher's generated tokens as SFT targets (steps.OPDOptions.policy); then the reward,
success and tokens/<domain> scalars describe the teachers' rollouts.

Sampling is at temperature 1 with no top-p, top-k or penalties (settings.py rejects anything else for this stage), so
the behaviour log-probs the engine records are the student's own log-probs at rollout time: the importance ratio
π_θ/μ in the loss is 1 up to numerics, and differs from it only through the weights having moved since the rollout.

    a1jax train --config experiments/agents_a1_distill.py:tiny --workdir DIR
"""
from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np

from a1jax.distill import rollouts as R
from a1jax.distill import gate, teachers as teacher_lib
from a1jax.distill.settings import TeacherSpec
from a1jax.distill.runner import StageRun
from a1jax.train.experiment import Experiment

log = logging.getLogger("a1jax.distill")


def load_teachers(run: StageRun, domains=None) -> dict[int, object]:
    """{domain id: teacher} from config.teachers (those of `domains`, default all), on the student's mesh."""
    chunk = run.exp.model.loss_chunk_size
    return {run.domains[spec.domain]: teacher_lib.make_teacher(spec, run.tok, chunk=chunk, mesh=run.built.mesh,
                                                               rules=run.built.rules,
                                                               vocab_size=run.exp.model.vocab_size)
            for spec in run.settings.teachers if domains is None or spec.domain in domains}


def distilled_domains(run: StageRun, teachers: dict | None = None) -> list[str]:
    """The domains whose teacher passes the check of gate.py (on the validation split, before distilling; a resumed
    run reads the verdicts it wrote). One line per domain; gate/* scalars at step 0. `teachers` (tests: in-memory
    teacher objects) are not rolled out: the check is skipped for them."""
    s = run.settings
    specs = {t.domain: t for t in s.teachers}
    if teachers is not None:  # in-memory teachers: nothing to roll out
        specs = {d: TeacherSpec(domain=d, url="in-memory") for d in teachers}
    verdicts = gate.check(run.workdir, run.exp.model, run.engine_params(), run.tok, specs, s.envs, s.rollout,
                          s.gate)
    kept = [d for d in s.envs.domains if verdicts[d]["distilled"]]
    scalars = {}
    for d in s.envs.domains:
        v = verdicts[d]
        print(f"teacher check  {d}: {'distilled' if v['distilled'] else 'LEFT OUT'} ({v['reason']})", flush=True)
        scalars[f"gate/{d}/distilled"] = float(v["distilled"])
        for who in ("student", "teacher"):
            if v[who] is not None:
                scalars[f"gate/{d}/{who}_success"] = float(v[who])
    if not run.resumed and any(k.endswith("_success") for k in scalars):  # the check ran
        run.writer.scalars(0, scalars)
    if not kept:
        raise SystemExit(f"a1jax train: stage 3 has nothing to distil: no domain's teacher beats the student on the "
                         f"validation split (see {os.path.join(run.workdir, gate.FILE)}); improve the teachers, or "
                         f"set config.gate.keep=['all'] to distil anyway")
    return kept


def anchored_domains(run: StageRun, kept) -> list[str]:
    """The domains the teacher check left out that stay in training, distilled toward the student's own frozen
    starting weights (config.gate.anchor; needs the start, config.init_from). One line each."""
    s = run.settings
    out = [d for d in s.envs.domains if d not in kept] if s.gate.anchor and run.init_from else []
    for d in out:
        print(f"teacher check  {d}: anchored to the student's start ({run.init_from}): its rollouts are distilled "
              f"toward those frozen weights, so training the other domains does not move it", flush=True)
    if out and not run.resumed:
        run.writer.scalars(0, {f"gate/{d}/anchored": 1.0 for d in out})
    return out


def anchor_teacher(run: StageRun, k: int):
    """The frozen starting weights of the student as a teacher (config.gate.anchor)."""
    return teacher_lib.LocalTeacher(run.init_from, k=k, chunk=run.exp.model.loss_chunk_size,
                                    params=run.start_params(), cfg=run.exp.model)


def step_items(run: StageRun, envs: dict, step: int, domains) -> list:
    """Step 1: this step's (task, env) pairs: the step draws tasks_per_domain train tasks for each configured domain,
    shared equally among `domains` (the distilled ones), so a domain the teacher check left out hands its tasks and
    batch rows to the others instead of leaving them empty."""
    s = run.settings
    step = 0 if s.envs.fixed_tasks else step
    n = s.envs.tasks_per_domain * len(s.envs.domains) // max(len(domains), 1)
    items = []
    for d in domains:
        tasks = R.draw_tasks(envs[d], d, n=n, horizons=s.envs.horizons_of(d),
                             seed=R.step_seed(s.envs.task_seed, step, run.domains[d]))
        items += [(t, envs[d]) for t in tasks]
    return items


def rollout_seed(run: StageRun, step: int) -> int:
    return R.step_seed(run.exp.config.seed, 0 if run.settings.envs.fixed_tasks else step, 7919)


def pack_step(run: StageRun, trajs, domains):
    """Step 3: the trajectories packed into [B, T], B / n_domains rows per domain. Returns (Packed, row_domains)."""
    B, T = run.exp.data.batch_size, run.exp.data.seq_len
    per = B // len(domains)
    row_domains = [run.domains[d] for d in domains for _ in range(per)]
    packed = R.pack([R.rollout_piece(t) for t in trajs], rows=len(row_domains), seq_len=T, pad_id=run.tok.pad_id,
                    row_domains=row_domains)
    return packed, row_domains


def opd_batch(run: StageRun, engine, envs: dict, step: int, domains=None):
    """Steps 1-3: the student's rollouts of this step in `domains` (default: all), packed domain-balanced.
    Returns (Packed, trajectories, row_domains)."""
    domains = list(domains or run.settings.envs.domains)
    trajs = R.roll_out(engine, run.tok, step_items(run, envs, step, domains), run.settings.rollout,
                       seed=rollout_seed(run, step), domain_ids=run.domains)
    packed, row_domains = pack_step(run, trajs, domains)
    return packed, trajs, row_domains


def teacher_engines(run: StageRun, teachers: dict[int, object]) -> dict[int, object]:
    """{domain id: a rollout engine on that domain's teacher} for config.distill.policy="off" (local teachers only:
    an HTTP teacher scores tokens but cannot roll out here)."""
    engines = {}
    for d, t in teachers.items():
        if not (hasattr(t, "params") and hasattr(t, "cfg")):
            raise ValueError(f"config.distill.policy='off': the teacher of domain id {d} ({type(t).__name__}) has no "
                             f"local weights to roll out; off-policy distillation needs local teachers "
                             f"(config.teachers[].workdir)")
        engines[d] = R.make_engine(t.cfg, jax.device_put(t.params, jax.devices()[0]), run.tok, run.settings.rollout)
    return engines


def off_policy_batch(run: StageRun, engines: dict[int, object], envs: dict, step: int, domains):
    """Steps 1-3 of policy="off": the same tasks the student would have drawn, each domain's rolled out by its own
    teacher (same rollout settings, T = 1), packed exactly like the student's. Returns (Packed, trajectories,
    row_domains)."""
    domains = list(domains)
    items, seed, trajs = step_items(run, envs, step, domains), rollout_seed(run, step), []
    for d in domains:
        mine = [(t, env) for t, env in items if t.domain == d]
        trajs += R.roll_out(engines[run.domains[d]], run.tok, mine, run.settings.rollout, seed=seed,
                            domain_ids=run.domains)
    packed, row_domains = pack_step(run, trajs, domains)
    return packed, trajs, row_domains


def step_scalars(m: dict, trajs, packed, tstats: dict, names: dict[str, int]) -> dict[str, float]:
    """Per-domain metrics of one step: reverse KL to the teacher (the step's estimate, on the kept tokens), reward and
    success of the rollouts, generated tokens, IS nonzero fraction, teacher tail mass, teacher failures."""
    out = {"train/loss": float(m["loss"]), "train/kl": float(m["kl"]), "train/grad_norm": float(m["grad_norm"]),
           "train/learning_rate": float(m["learning_rate"]), "train/is_nonzero_frac": float(m["is_nonzero_frac"]),
           "train/skipped_updates": float(m["skipped"]), "rollout/dropped": float(packed.dropped),
           "rollout/truncated": float(packed.truncated)}
    nd = max(names.values()) + 1
    rew, cnt = R.per_domain([t.reward for t in trajs], [t.domain_id for t in trajs], nd)
    suc, _ = R.per_domain([float(t.success) for t in trajs], [t.domain_id for t in trajs], nd)
    gen, _ = R.per_domain([float(sum(t.record["loss_mask"])) for t in trajs], [t.domain_id for t in trajs], nd)
    for name, d in names.items():
        out.update({f"kl/{name}": float(m["domain_kl"][d]), f"reward/{name}": rew[d] / max(cnt[d], 1),
                    f"success/{name}": suc[d] / max(cnt[d], 1), f"tokens/{name}": gen[d],
                    f"is_nonzero_frac/{name}": float(m["domain_is_nonzero_frac"][d]),
                    f"tail_mass/{name}": float(m["domain_tail_mass"][d]),
                    f"entropy/{name}": float(m["domain_entropy"][d]),
                    f"teacher_failures/{name}": float(tstats.get(d, {}).get("failures", 0)),
                    f"teacher_invalid_tokens/{name}": float(tstats.get(d, {}).get("invalid_tokens", 0))})
        for reason, count in sorted(tstats.get(d, {}).get("reasons", {}).items()):  # e.g. .../nan, .../timeout
            out[f"teacher_failures/{name}/{reason}"] = float(count)
    return out


def run_opd(exp: Experiment, workdir: str, *, init_from: str = "", devices=None, teachers: dict | None = None,
            allow_fresh_start: bool = False) -> list[dict]:
    """Runs stage 3 in `workdir` (resuming from its newest checkpoint) until config.train.steps; returns the
    scalars of the steps it ran. `teachers` ({domain name: object with .score(batch)}) overrides config.teachers
    (tests)."""
    run = StageRun(exp, workdir, init_from=init_from, devices=devices, allow_fresh_start=allow_fresh_start)
    config, s = exp.config, exp.loop
    total, history = int(config.train.steps), []
    try:
        envs = R.make_envs(s)
        kept = distilled_domains(run, teachers)
        by_id = (load_teachers(run, kept) if teachers is None else
                 {run.domains[d]: t for d, t in teachers.items() if d in kept})
        k = max(getattr(t, "k", 1) for t in by_id.values())
        anchored = anchored_domains(run, kept) if teachers is None else []
        if anchored:
            anchor = anchor_teacher(run, k)
            by_id.update({run.domains[d]: anchor for d in anchored})
        kept = [d for d in s.envs.domains if d in kept or d in anchored]  # every domain this run trains on
        off = run.built.ctx.options.policy == "off"
        if off:
            engines = teacher_engines(run, by_id)
        else:
            engine = R.make_engine(exp.model, run.engine_params(), run.tok, s.rollout)
        reuse, packed = s.rollout.reuse, None
        while run.keep_going(total, reuse):
            t0 = t1 = t2 = time.perf_counter()
            if packed is None or run.step % reuse == 0:  # else config.rollout.reuse: the last batch once more
                if off:
                    packed, trajs, row_domains = off_policy_batch(run, engines, envs, run.step, kept)
                else:
                    packed, trajs, row_domains = opd_batch(run, engine, envs, run.step, kept)
                t1 = time.perf_counter()
                if off:  # nothing to score: the step trains on the teachers' own tokens (steps.OPDOptions.policy)
                    B, T = packed.batch["tokens"].shape
                    targets, tstats = teacher_lib.empty_targets(B, T, k), {}
                else:
                    targets, tstats = teacher_lib.route(by_id, packed.batch, row_domains, k,
                                                        vocab_size=exp.model.vocab_size)
                t2 = time.perf_counter()
            batch = {key: v for key, v in packed.batch.items() if np.ndim(v) == 2}
            run.state, m = run.step_fn(run.state, batch, targets)
            m = jax.device_get(m)
            if not off:
                engine.params = run.engine_params()  # the sampler follows the student
            run.step += 1
            t3 = time.perf_counter()
            scalars = step_scalars(m, trajs, packed, tstats, {d: run.domains[d] for d in kept})
            tokens = float(np.sum(packed.batch["segment_ids"] > 0))
            scalars.update({"perf/rollout_s": t1 - t0, "perf/teacher_s": t2 - t1, "perf/update_s": t3 - t2,
                            "perf/tokens_per_s": tokens / max(t3 - t0, 1e-9)})
            history.append({"step": run.step, **scalars})
            run.writer.scalars(run.step, scalars)
            if run.step % config.train.log_every == 0 or run.step == total:
                run.progress.print(run.step, scalars["train/loss"], scalars["perf/tokens_per_s"])
                kl = "  ".join(f"{n} kl {scalars[f'kl/{n}']:.3f} succ {scalars[f'success/{n}']:.2f}"
                               for n in kept)
                print(f"    {kl}", flush=True)
            run.after_step()
        run.finish(run.step)
    finally:
        run.close()
    return history
