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
Steps 1-4 and 6 are the batch source `OPDSource` of the one training loop (a1jax/train/loop.py), which takes step 5.

config.distill.policy="off" (an ablation: sequence-level KD) replaces steps 2 and 4: each domain's teacher rolls out
that step's tasks (the same tasks, the same rollout settings) and the student takes the same number of updates, by
the same `opd_step`, on the teacher's generated tokens as SFT targets (steps.OPDOptions.policy); then the reward,
success and tokens/<domain> scalars describe the teachers' rollouts. config.distill.policy="mix" (GKD's data mix)
splits each domain's tasks of step 1: the student rolls out 1 - config.distill.off_share of them and the domain's
teacher the rest; both kinds are packed together, scored by the teacher in step 4 and trained by the same divergence
(the teachers' tokens without an importance weight); success/<domain> is the student's, teacher_success/<domain> the
teachers'.

Sampling is at temperature 1 with no top-p, top-k or penalties (settings.py rejects anything else for this stage), so
the behaviour log-probs the engine records are the student's own log-probs at rollout time: the importance ratio
π_θ/μ in the loss is 1 up to numerics, and differs from it only through the weights having moved since the rollout.

    a1jax train --config experiments/agents_a1_distill.py:tiny --workdir DIR
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import numpy as np

from a1jax import sharding
from a1jax.distill import rollouts as R
from a1jax.distill import gate, teachers as teacher_lib
from a1jax.distill.settings import TeacherSpec
from a1jax.distill.runner import RolloutSource
from a1jax.train.experiment import Experiment
from a1jax.train.loop import run_stage


def load_teachers(run: RolloutSource, domains=None) -> dict[int, object]:
    """{domain id: teacher} from config.teachers (those of `domains`, default all), on the student's mesh."""
    chunk = run.exp.model.loss_chunk_size
    return {run.domains[spec.domain]: teacher_lib.make_teacher(spec, run.tok, chunk=chunk, mesh=run.built.mesh,
                                                               rules=run.built.rules,
                                                               vocab_size=run.exp.model.vocab_size)
            for spec in run.settings.teachers if domains is None or spec.domain in domains}


def distilled_domains(run: RolloutSource, teachers: dict | None = None) -> list[str]:
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


def anchored_domains(run: RolloutSource, kept) -> list[str]:
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


def anchor_teacher(run: RolloutSource, k: int):
    """The frozen starting weights of the student as a teacher (config.gate.anchor)."""
    return teacher_lib.LocalTeacher(run.init_from, k=k, chunk=run.exp.model.loss_chunk_size,
                                    params=run.start_params(), cfg=run.exp.model)


def step_items(run: RolloutSource, envs: dict, step: int, domains, anchored=()) -> list:
    """Step 1: this step's (task, env) pairs: the step draws `envs.tasks_of(d)` train tasks for each configured
    domain d, and the ones trained (`domains`) share that total in proportion to their own counts, so a domain the
    teacher check left out hands its tasks and batch rows to the others instead of leaving them empty. An `anchored`
    domain (in `domains`, distilled toward the student's start) draws config.gate.anchor_tasks of them when that is
    set."""
    s = run.settings
    step = 0 if s.envs.fixed_tasks else step
    total = sum(s.envs.tasks_of(d) for d in s.envs.domains)
    trained = max(sum(s.envs.tasks_of(d) for d in domains), 1)
    items = []
    for d in domains:
        n = s.envs.tasks_of(d) * total // trained
        tasks = R.draw_tasks(envs[d], d, n=s.gate.anchor_tasks if d in anchored and s.gate.anchor_tasks else n,
                             horizons=s.envs.horizons_of(d),
                             seed=R.step_seed(s.envs.task_seed, step, run.domains[d]))
        items += [(t, envs[d]) for t in tasks]
    return items


def rollout_seed(run: RolloutSource, step: int) -> int:
    return R.step_seed(run.exp.config.seed, 0 if run.settings.envs.fixed_tasks else step, 7919)


def pack_step(run: RolloutSource, trajs, domains, ready: bool = False):
    """Step 3: the trajectories (with `ready`, packing pieces already) packed into [B, T], each domain in its own rows
    (`envs.rows_of`: B / n_domains each, or shares of config.envs.domain_rows), T the shortest of seq_len and its
    halvings that holds them all (`R.pack_fitted`). Returns (Packed, row_domains)."""
    B, T = run.exp.data.batch_size, run.exp.data.seq_len
    rows = run.settings.envs.rows_of(domains, B)
    row_domains = [run.domains[d] for d, n in zip(domains, rows) for _ in range(n)]
    pieces = trajs if ready else [R.rollout_piece(t, t1=True) for t in trajs]
    packed = R.pack_fitted(pieces, rows=len(row_domains),
                           lengths=R.halvings(T, functools.partial(_fits_mesh, run)), pad_id=run.tok.pad_id,
                           row_domains=row_domains)
    return packed, row_domains


def _fits_mesh(run: RolloutSource, seq_len: int) -> bool:
    try:
        sharding.check_sequence_fits_mesh(seq_len, run.exp.model, run.built.mesh)
    except ValueError:
        return False
    return True


def opd_batch(run: RolloutSource, engine, envs: dict, step: int, domains=None, anchored=()):
    """Steps 1-3: the student's rollouts of this step in `domains` (default: all), packed domain-balanced.
    Returns (Packed, trajectories, row_domains)."""
    domains = list(domains or run.settings.envs.domains)
    trajs = R.roll_out(engine, run.tok, step_items(run, envs, step, domains, anchored), run.settings.rollout,
                       seed=rollout_seed(run, step), domain_ids=run.domains)
    packed, row_domains = pack_step(run, trajs, domains)
    return packed, trajs, row_domains


def teacher_engines(run: RolloutSource, teachers: dict[int, object], temperature: float = -1.0) -> dict[int, object]:
    """{domain id: a rollout engine on that domain's teacher} for config.distill.policy "off" and "mix" (local
    teachers only: an HTTP teacher scores tokens but cannot roll out here), sampling at `temperature` (0: greedy;
    -1: config.rollout.temperature, the student's)."""
    ro = run.settings.rollout
    sampling = R.sampling_params(ro if temperature < 0 else dataclasses.replace(ro, temperature=temperature))
    engines = {}
    for d, t in teachers.items():
        if not (hasattr(t, "params") and hasattr(t, "cfg")):
            raise ValueError(f"config.distill.policy 'off'/'mix': the teacher of domain id {d} ({type(t).__name__}) "
                             f"has no local weights to roll out; the teachers' own rollouts need local teachers "
                             f"(config.teachers[].workdir)")
        engines[d] = R.make_engine(t.cfg, jax.device_put(t.params, jax.devices()[0]), run.tok, ro, sampling=sampling)
    return engines


def off_policy_batch(run: RolloutSource, engines: dict[int, object], envs: dict, step: int, domains, anchored=()):
    """Steps 1-3 of policy="off": the same tasks the student would have drawn, each domain's rolled out by its own
    teacher (the rollout settings, at config.distill.off_temperature), packed exactly like the student's. Returns
    (Packed, trajectories, row_domains)."""
    domains = list(domains)
    trajs = teacher_rollouts(run, engines, step_items(run, envs, step, domains, anchored), rollout_seed(run, step),
                             domains)
    packed, row_domains = pack_step(run, trajs, domains)
    return packed, trajs, row_domains


def teacher_rollouts(run: RolloutSource, engines: dict[int, object], items: list, seed: int, domains) -> list:
    """Each domain's (task, env) pairs of `items` rolled out by that domain's teacher engine (the student's rollout
    settings and seed; the temperature is the engine's, `teacher_engines`)."""
    trajs = []
    for d in domains:
        mine = [(t, env) for t, env in items if t.domain == d]
        if mine:
            trajs += R.roll_out(engines[run.domains[d]], run.tok, mine, run.settings.rollout, seed=seed,
                                domain_ids=run.domains)
    return trajs


def split_off(items: list, share: float) -> tuple[list, list]:
    """policy="mix": (the student's, the teachers') (task, env) pairs: in each domain the first round(share · n)
    of its drawn tasks (a random draw already) go to the teacher, at least one and at most n - 1 when n > 1."""
    on, off = [], []
    for d in dict.fromkeys(t.domain for t, _ in items):
        mine = [(t, env) for t, env in items if t.domain == d]
        k = min(max(round(share * len(mine)), 1), len(mine) - 1) if len(mine) > 1 else round(share)
        off += mine[:k]
        on += mine[k:]
    return on, off


def mixed_batch(run: RolloutSource, engine, engines: dict[int, object], envs: dict, step: int, domains,
                anchored=(), share: float = 0.5):
    """Steps 1-3 of policy="mix" (GKD's data mix): this step's tasks split by `split_off`, the student rolling out
    its part and each domain's teacher the rest (same rollout settings and seed), packed together with every
    teacher token marked `off_policy`. An anchored domain stays on-policy (its "teacher" is the student's start).
    Returns (Packed, the student's trajectories, the teachers', row_domains)."""
    domains = list(domains)
    items, seed = step_items(run, envs, step, domains, anchored), rollout_seed(run, step)
    on, off = split_off([it for it in items if it[0].domain not in anchored], share)
    on += [it for it in items if it[0].domain in anchored]
    mine = R.roll_out(engine, run.tok, on, run.settings.rollout, seed=seed, domain_ids=run.domains)
    theirs = teacher_rollouts(run, engines, off, seed, domains)
    pieces = [R.rollout_piece(t, t1=True) for t in mine]
    for t in theirs:
        piece = R.rollout_piece(t, t1=True)
        pieces.append(dict(piece, off_policy=np.ones(len(piece["tokens"]), np.float32)))
    packed, row_domains = pack_step(run, pieces, domains, ready=True)
    return packed, mine, theirs, row_domains


def step_scalars(m: dict, trajs, packed, tstats: dict, names: dict[str, int], theirs=()) -> dict[str, float]:
    """Per-domain metrics of one step: reverse KL to the teacher (the step's estimate, on the kept tokens), reward and
    success of the rollouts `trajs`, generated tokens (with the teachers' rollouts `theirs` of policy="mix", whose
    success is teacher_success/<domain>), IS nonzero fraction, teacher tail mass, teacher failures."""
    out = {"train/loss": float(m["loss"]), "train/kl": float(m["kl"]), "train/grad_norm": float(m["grad_norm"]),
           "train/learning_rate": float(m["learning_rate"]), "train/is_nonzero_frac": float(m["is_nonzero_frac"]),
           "train/skipped_updates": float(m["skipped"]), "rollout/dropped": float(packed.dropped),
           "rollout/truncated": float(packed.truncated),
           "rollout/row_len": float(np.shape(packed.batch["tokens"])[1])}  # pack_step's choice among seq_len's halvings
    nd = max(names.values()) + 1
    rew, cnt = R.per_domain([t.reward for t in trajs], [t.domain_id for t in trajs], nd)
    suc, _ = R.per_domain([float(t.success) for t in trajs], [t.domain_id for t in trajs], nd)
    both = list(trajs) + list(theirs)
    gen, _ = R.per_domain([float(sum(t.record["loss_mask"])) for t in both], [t.domain_id for t in both], nd)
    t_suc, t_cnt = R.per_domain([float(t.success) for t in theirs], [t.domain_id for t in theirs], nd)
    for name, d in names.items():
        out.update({f"kl/{name}": float(m["domain_kl"][d]), f"reward/{name}": rew[d] / max(cnt[d], 1),
                    f"success/{name}": suc[d] / max(cnt[d], 1), f"tokens/{name}": gen[d],
                    f"is_nonzero_frac/{name}": float(m["domain_is_nonzero_frac"][d]),
                    f"tail_mass/{name}": float(m["domain_tail_mass"][d]),
                    f"entropy/{name}": float(m["domain_entropy"][d]),
                    f"teacher_failures/{name}": float(tstats.get(d, {}).get("failures", 0)),
                    f"teacher_invalid_tokens/{name}": float(tstats.get(d, {}).get("invalid_tokens", 0))})
        if t_cnt[d]:
            out[f"teacher_success/{name}"] = t_suc[d] / t_cnt[d]
        for reason, count in sorted(tstats.get(d, {}).get("reasons", {}).items()):  # e.g. .../nan, .../timeout
            out[f"teacher_failures/{name}/{reason}"] = float(count)
    return out


class OPDSource(RolloutSource):
    """Steps 1-4 of the module docstring, for the loop (a1jax/train/loop.py) that takes step 5; `updated` is step 6.
    `teachers` ({domain name: object with .score(batch)}) overrides config.teachers (tests)."""

    def __init__(self, run, teachers: dict | None = None):
        super().__init__(run)
        s = self.settings
        self.envs = R.make_envs(s)
        kept = distilled_domains(self, teachers)
        self.by_id = (load_teachers(self, kept) if teachers is None else
                      {self.domains[d]: t for d, t in teachers.items() if d in kept})
        self.k = max(getattr(t, "k", 1) for t in self.by_id.values())
        self.anchored = anchored = anchored_domains(self, kept) if teachers is None else []
        if anchored:
            anchor = anchor_teacher(self, self.k)
            self.by_id.update({self.domains[d]: anchor for d in anchored})
        self.kept = [d for d in s.envs.domains if d in kept or d in anchored]  # every domain this run trains on
        self.policy = policy = self.built.ctx.options.policy
        if policy != "on":  # the teachers roll out (all the tasks, or their share of a "mix")
            # "mix": only the distilled domains' teachers roll out; anchored domains stay on-policy
            self.engines = teacher_engines(self, self.by_id if policy == "off" else
                                           {self.domains[d]: self.by_id[self.domains[d]] for d in kept},
                                           self.built.ctx.options.off_temperature)
        if policy != "off":
            self.engine = R.make_engine(self.exp.model, self.engine_params(), self.tok, s.rollout)
        self.theirs = []  # policy="mix": this batch's teacher rollouts
        self.boundary, self.packed = s.rollout.reuse, None  # a reused rollout batch is not in the checkpoint

    def next(self, step: int):
        self.t0 = t1 = t2 = time.perf_counter()
        policy = self.policy
        if self.packed is None or step % self.boundary == 0:  # else config.rollout.reuse: the last batch once more
            if policy == "off":
                self.packed, self.trajs, row_domains = off_policy_batch(self, self.engines, self.envs, step,
                                                                        self.kept, self.anchored)
            elif policy == "mix":
                self.packed, self.trajs, self.theirs, row_domains = mixed_batch(
                    self, self.engine, self.engines, self.envs, step, self.kept, self.anchored,
                    self.built.ctx.options.off_share)
            else:
                self.packed, self.trajs, row_domains = opd_batch(self, self.engine, self.envs, step, self.kept,
                                                                 self.anchored)
            t1 = time.perf_counter()
            if policy == "off":  # nothing to score: the step trains on the teachers' own tokens (OPDOptions.policy)
                B, T = self.packed.batch["tokens"].shape
                self.targets, self.tstats = teacher_lib.empty_targets(B, T, self.k), {}
            else:
                self.targets, self.tstats = teacher_lib.route(self.by_id, self.packed.batch, row_domains, self.k,
                                                              vocab_size=self.exp.model.vocab_size)
            t2 = time.perf_counter()
        self.perf = {"perf/rollout_s": t1 - self.t0, "perf/teacher_s": t2 - t1}
        self.t_update = t2
        return {key: v for key, v in self.packed.batch.items() if np.ndim(v) == 2}, self.targets

    def record(self, step: int, metrics: dict) -> dict:
        m = jax.device_get(metrics)
        scalars = step_scalars(m, self.trajs, self.packed, self.tstats, {d: self.domains[d] for d in self.kept},
                               self.theirs)
        return self.timed(scalars | self.perf | {"perf/update_s": time.perf_counter() - self.t_update},
                          self.packed.batch)

    def note(self, scalars: dict) -> str:
        return "  ".join(f"{n} kl {scalars[f'kl/{n}']:.3f} succ {scalars[f'success/{n}']:.2f}" for n in self.kept)


def run_opd(exp: Experiment, workdir: str, *, init_from: str = "", devices=None, teachers: dict | None = None,
            allow_fresh_start: bool = False) -> list[dict]:
    """Runs stage 3 in `workdir` (resuming from its newest checkpoint) until config.train.steps; returns the
    scalars of the steps it ran. `teachers` ({domain name: object with .score(batch)}) overrides config.teachers
    (tests)."""
    return run_stage(exp, workdir, init_from=init_from, devices=devices, allow_fresh_start=allow_fresh_start,
                     source=functools.partial(OPDSource, teachers=teachers)).history
