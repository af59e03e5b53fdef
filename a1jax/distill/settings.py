"""The config sections of the rollout stages ("teacher_sft", "grpo", "opd"), validated up front.

    config.envs      domains, horizons, tasks_per_domain (per step), task_seed, options {domain: {factory kwargs}},
                     domain_horizons {domain: [h, ...]} (a domain's own horizons instead of `horizons`),
                     domain_tasks {domain: n} (a domain's own tasks per step instead of `tasks_per_domain`),
                     domain_rows {domain: rows} (opd: the rows of config.data.batch_size each domain's trajectories
                     get, for domains whose trajectories differ in length; default: an equal share),
                     fixed_tasks (every step rolls out step 0's tasks with step 0's sampler seed: a debugging check)
    config.rollout   engine and sampling: batch_size, max_len, max_new_tokens, max_turns, max_tokens,
                     enable_thinking, temperature, top_p, top_k, presence_penalty, group_size (grpo),
                     reuse (opd: updates per rollout batch)
    config.teachers  (opd) one dict per domain: domain, and workdir (a frozen a1jax training workdir, the default
                     path) or url (an HTTP prompt-logprobs endpoint); k (top-k), tokenizer (default: the student's),
                     timeout (HTTP seconds), kxm ("mask" | "chain", cross-tokenizer k:m groups)
    config.expert_iteration  (teacher_sft) rollout_every (steps between rollout rounds), rollout_fraction (max share
                     of a batch's rows given to accepted rollouts; the rest are the domain's expert demonstrations),
                     demos (how many demonstrations the domain's expert writes up front)
    config.gate      (opd) tasks, margin, keep, anchor, anchor_tasks: the teacher check before distilling (gate.py)
    config.init_from the checkpoint to start from (a training workdir or a converted directory); `--init_from` wins

The loss options stay where their steps read them (`config.distill`, `config.grpo`: a1jax/distill/steps.py).
Every error names the field and what was expected.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from a1jax.data.chat import check_thinking

KXM = ("mask", "chain")


@dataclasses.dataclass(frozen=True)
class Envs:
    domains: tuple[str, ...]
    horizons: tuple[int, ...] = (1,)
    tasks_per_domain: int = 4
    task_seed: int = 0
    options: dict = dataclasses.field(default_factory=dict)
    fixed_tasks: bool = False  # every step re-draws step 0's tasks and sampler seed (overfit-one-batch checks)
    domain_horizons: dict = dataclasses.field(default_factory=dict)  # {domain: [h, ...]} overrides `horizons`
    domain_tasks: dict = dataclasses.field(default_factory=dict)  # {domain: n} overrides `tasks_per_domain`
    domain_rows: dict = dataclasses.field(default_factory=dict)  # opd: {domain: rows}, every domain, sum = batch

    def horizons_of(self, domain: str) -> tuple[int, ...]:
        """The task horizons of `domain`: its entry in domain_horizons, else `horizons`."""
        return tuple(self.domain_horizons.get(domain, self.horizons))

    def tasks_of(self, domain: str) -> int:
        """Train tasks `domain` draws per step: its entry in domain_tasks, else `tasks_per_domain`."""
        return int(self.domain_tasks.get(domain, self.tasks_per_domain))

    def rows_of(self, domains, batch_size: int) -> list[int]:
        """The rows of a `batch_size`-row batch each of `domains` (the ones a step trains) gets: shares of
        domain_rows (largest remainders, at least one each), else batch_size // len(domains) each."""
        if not self.domain_rows:
            return [batch_size // len(domains)] * len(domains)
        weights = [self.domain_rows[d] for d in domains]
        quota = [batch_size * w / sum(weights) for w in weights]
        rows = [max(1, int(q)) for q in quota]
        while sum(rows) > batch_size:  # the minimum of one row each took more than the quotas gave
            rows[rows.index(max(rows))] -= 1
        for i in sorted(range(len(rows)), key=lambda i: int(quota[i]) - quota[i])[:batch_size - sum(rows)]:
            rows[i] += 1
        return rows


@dataclasses.dataclass(frozen=True)
class Rollout:
    batch_size: int = 8
    max_len: int = 8192
    max_new_tokens: int = 256
    max_turns: int = 4
    max_tokens: int = 2048
    enable_thinking: bool | str = True  # True, False or "model" (a1jax.data.chat.THINKING_MODES)
    # Stage 3 samples at T = 1 with no filters or penalties (see opd.py); stage 2 may sample as it likes.
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    presence_penalty: float = 0.0
    group_size: int = 4  # grpo: rollouts per task
    # opd: consecutive updates on each rollout batch (1: a fresh rollout per update). The teacher targets stay valid
    # (they score fixed tokens) and the truncated IS weights absorb the student having moved since the rollout.
    reuse: int = 1


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    domain: str
    workdir: str = ""
    url: str = ""
    k: int = 16
    tokenizer: str = ""
    timeout: float = 60.0
    kxm: str = "mask"


@dataclasses.dataclass(frozen=True)
class ExpertIteration:
    rollout_every: int = 10
    rollout_fraction: float = 0.5
    demos: int = 64


@dataclasses.dataclass(frozen=True)
class Gate:
    """config.gate: the teacher check before distilling (a1jax/distill/gate.py)."""
    tasks: int = 32       # validation tasks per domain; 0: no check
    margin: float = 0.0   # the teacher must beat the student by more than this (absolute success)
    keep: tuple = ()      # domains distilled whatever the check says; ("all",) for every domain
    seed: int = 0
    # A domain left out is still rolled out and distilled toward the student's own starting weights (config.init_from,
    # frozen), so the updates of the other domains do not drag it away; False: it sits out (its tasks and rows go to
    # the distilled domains) and drifts with the shared weights.
    anchor: bool = True
    # Train tasks an anchored domain draws per rollout batch (0: config.envs.tasks_per_domain, as a distilled one).
    # The anchor only holds the domain in place, so a few tasks do; its rollouts cost as much as a distilled domain's.
    anchor_tasks: int = 0


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    envs: Envs
    rollout: Rollout
    teachers: tuple[TeacherSpec, ...] = ()
    expert_iteration: ExpertIteration = ExpertIteration()
    init_from: str = ""
    gate: Gate = Gate()


def _plain(x: Any) -> Any:
    return x.to_dict() if hasattr(x, "to_dict") else x


def _section(config, name: str, cls, required: bool = False) -> Any:
    raw = _plain(config.get(name))
    if raw is None:
        if required:
            raise ValueError(f"config.{name} is missing (stage {config.stage!r} needs it)")
        return cls()
    if not isinstance(raw, dict):
        raise ValueError(f"config.{name}: expected a dict of fields, got {type(raw).__name__}")
    return _build(f"config.{name}", cls, raw)


def _build(where: str, cls, raw: dict) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
    kw = {}
    for k, v in raw.items():
        if isinstance(v, list):
            v = tuple(v)
        kw[k] = v
    try:
        return cls(**kw)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def _check(cond: bool, where: str, value, expected: str):
    if not cond:
        raise ValueError(f"{where}={value!r}: expected {expected}")


def _positive_int(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1


def _check_rollout_interval(config, where: str, interval: int, why: str):
    """`interval` steps share one rollout: it must divide config.checkpoint.every and config.train.steps, so every
    checkpoint falls between two rollouts and a resumed run rebuilds what the uninterrupted one had."""
    every = int((config.get("checkpoint") or {}).get("every", 1))
    steps = int((config.get("train") or {}).get("steps", 1))
    _check(every % interval == 0 and steps % interval == 0, where, interval,
           f"a divisor of config.checkpoint.every={every} and config.train.steps={steps} ({why})")


def from_config(config, *, batch_size: int) -> LoopSettings:
    """The typed loop settings of a rollout stage; `batch_size` is config.data.batch_size (rows per step)."""
    from a1jax.envs import registry
    stage = config.stage
    if "domains" not in (_plain(config.get("envs")) or {}):
        raise ValueError(f"config.envs.domains is missing (stage {stage!r} rolls out in environments)")
    envs = _section(config, "envs", Envs, required=True)
    known = registry.names()
    _check(bool(envs.domains) and all(d in known for d in envs.domains), "config.envs.domains", envs.domains,
           f"a non-empty list of domains from {known}")
    _check(len(set(envs.domains)) == len(envs.domains), "config.envs.domains", envs.domains, "no repeats")
    _check(bool(envs.horizons) and all(isinstance(h, int) and h >= 1 for h in envs.horizons),
           "config.envs.horizons", envs.horizons, "a non-empty list of positive integers")
    _check(isinstance(envs.domain_horizons, dict) and set(envs.domain_horizons) <= set(envs.domains) and all(
        isinstance(hs, (list, tuple)) and hs and all(isinstance(h, int) and h >= 1 for h in hs)
        for hs in envs.domain_horizons.values()), "config.envs.domain_horizons", envs.domain_horizons,
        "a dict {domain of config.envs.domains: non-empty list of positive horizons}")
    _check(envs.tasks_per_domain >= 1, "config.envs.tasks_per_domain", envs.tasks_per_domain, "a positive integer")
    _check(isinstance(envs.domain_tasks, dict) and set(envs.domain_tasks) <= set(envs.domains) and all(
        _positive_int(n) for n in envs.domain_tasks.values()), "config.envs.domain_tasks", envs.domain_tasks,
        "a dict {domain of config.envs.domains: positive number of tasks per step}")
    _check(isinstance(envs.domain_rows, dict) and (not envs.domain_rows or (
        set(envs.domain_rows) == set(envs.domains) and all(_positive_int(n) for n in envs.domain_rows.values())
        and sum(envs.domain_rows.values()) == batch_size)), "config.envs.domain_rows", envs.domain_rows,
        f"empty (equal shares) or a dict {{every domain of config.envs.domains: positive rows}} summing to "
        f"config.data.batch_size={batch_size}")
    _check(isinstance(envs.options, dict) and set(envs.options) <= set(envs.domains), "config.envs.options",
           envs.options, "a dict {domain: {factory options}} over config.envs.domains")
    ro = _section(config, "rollout", Rollout)
    for name in ("batch_size", "max_len", "max_new_tokens", "max_turns", "max_tokens", "group_size", "reuse"):
        _check(isinstance(getattr(ro, name), int) and getattr(ro, name) >= 1, f"config.rollout.{name}",
               getattr(ro, name), "a positive integer")
    _check(ro.max_new_tokens < ro.max_len, "config.rollout.max_new_tokens", ro.max_new_tokens,
           f"less than config.rollout.max_len={ro.max_len}")
    check_thinking(ro.enable_thinking, "config.rollout.enable_thinking")
    if stage == "opd":
        # On-policy distillation needs the behaviour log-probs to be the student's own (docs/spec/recipe.md §2.8):
        # no filter or penalty. A temperature below 1 only sharpens which states the rollouts visit (nearer the
        # greedy path the report scores); the importance ratio then uses the T = 1 log-probs the engine records
        # (rollouts.rollout_piece), so it still compares the student with itself at rollout time.
        _check(0.0 < ro.temperature <= 1.0 and ro.top_p == 1.0 and ro.top_k == 0 and ro.presence_penalty == 0.0,
               "config.rollout (temperature, top_p, top_k, presence_penalty)",
               (ro.temperature, ro.top_p, ro.top_k, ro.presence_penalty),
               "(0 < T <= 1, 1.0, 0, 0.0) for stage 'opd': sampling must be the student's own distribution, "
               "at most sharpened by a temperature")
        _check_rollout_interval(config, "config.rollout.reuse", ro.reuse, "a checkpoint must fall between two "
                                "rollouts, so a resumed run rolls out what the uninterrupted one did")
        _check(bool(envs.domain_rows) or batch_size % len(envs.domains) == 0, "config.data.batch_size",
               batch_size, f"a multiple of the {len(envs.domains)} domains (domain-balanced rows; or set "
               f"config.envs.domain_rows)")
    if stage in ("teacher_sft", "grpo"):
        _check(len(envs.domains) == 1, "config.envs.domains", envs.domains,
               f"exactly one domain for stage {stage!r} (one teacher per domain)")
    if stage == "grpo":
        n = envs.tasks_per_domain * ro.group_size
        _check(batch_size >= n, "config.data.batch_size", batch_size,
               f">= envs.tasks_per_domain x rollout.group_size = {n} (one trajectory per row)")
    teachers = ()
    if stage == "opd":
        raw = _plain(config.get("teachers"))
        _check(isinstance(raw, (list, tuple)) and len(raw) > 0, "config.teachers", raw,
               "a non-empty list of dicts (domain, workdir or url, k)")
        teachers = tuple(_build(f"config.teachers[{i}]", TeacherSpec, dict(_plain(t))) for i, t in enumerate(raw))
        for i, t in enumerate(teachers):
            where = f"config.teachers[{i}]"
            _check(t.domain in envs.domains, f"{where}.domain", t.domain, f"one of config.envs.domains "
                                                                         f"{list(envs.domains)}")
            _check(bool(t.workdir) != bool(t.url), f"{where}.workdir/url", (t.workdir, t.url),
                   "exactly one of a teacher workdir or an HTTP url")
            _check(t.k >= 1, f"{where}.k", t.k, "a positive integer")
            _check(t.kxm in KXM, f"{where}.kxm", t.kxm, f"one of {KXM}")
        doms = [t.domain for t in teachers]
        missing = sorted(set(envs.domains) - set(doms))
        _check(not missing and len(set(doms)) == len(doms), "config.teachers", doms,
               f"exactly one teacher per domain of config.envs.domains (missing: {missing})")
    ei = _section(config, "expert_iteration", ExpertIteration)
    _check(ei.rollout_every >= 1, "config.expert_iteration.rollout_every", ei.rollout_every, "a positive integer")
    _check(0.0 <= ei.rollout_fraction <= 1.0, "config.expert_iteration.rollout_fraction", ei.rollout_fraction,
           "a number in [0, 1]")
    if stage == "teacher_sft" and ei.rollout_fraction > 0:
        _check(int(ei.rollout_fraction * batch_size) >= 1, "config.expert_iteration.rollout_fraction",
               ei.rollout_fraction, f"0, or at least one row of config.data.batch_size={batch_size} for rollouts")
        _check_rollout_interval(config, "config.expert_iteration.rollout_every", ei.rollout_every,
                                "a checkpoint must fall between two rollout rounds, so a resumed run trains on the "
                                "accepted rollouts the uninterrupted one did")
    _check(ei.demos >= (1 if stage == "teacher_sft" else 0), "config.expert_iteration.demos", ei.demos,
           "a positive integer (the demonstrations the rollouts are mixed with)")
    init_from = config.get("init_from", "") or ""
    _check(isinstance(init_from, str), "config.init_from", init_from, "a path (or empty)")
    gate = _section(config, "gate", Gate)
    _check(isinstance(gate.tasks, int) and gate.tasks >= 0, "config.gate.tasks", gate.tasks,
           "a non-negative integer (validation tasks per domain; 0 turns the teacher check off)")
    _check(isinstance(gate.margin, (int, float)) and 0.0 <= gate.margin < 1.0, "config.gate.margin", gate.margin,
           "a number in [0, 1)")
    _check(all(d == "all" or d in envs.domains for d in gate.keep), "config.gate.keep", gate.keep,
           f"domains of config.envs.domains {list(envs.domains)}, or 'all'")
    _check(isinstance(gate.anchor, bool), "config.gate.anchor", gate.anchor,
           "true or false (distil a left-out domain toward the student's frozen starting weights)")
    _check(isinstance(gate.anchor_tasks, int) and not isinstance(gate.anchor_tasks, bool) and gate.anchor_tasks >= 0,
           "config.gate.anchor_tasks", gate.anchor_tasks,
           "a non-negative integer (train tasks per rollout batch of an anchored domain; 0: tasks_per_domain)")
    return LoopSettings(envs=envs, rollout=ro, teachers=teachers, expert_iteration=ei, init_from=init_from,
                        gate=gate)
