"""Host side of the rollout stages: draw tasks, roll the model out in each task's environment, verify, and pack
the trajectories into the fixed [B, T] batches the jitted steps take.

Everything here is deterministic in (seed, step): the tasks of a step come from the domains' seeded generators and
the sampler's key is reset per step, so a resumed run rolls out exactly what the uninterrupted run would have.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from a1jax.data import packing
from a1jax.envs import registry
from a1jax.envs.base import Session, Task
from a1jax.rollout.agent import Rollout, RolloutConfig
from a1jax.rollout.sampling import SamplingParams

TRAIN_SPLIT = "train"  # the stages never train on "test" tasks: those are what a1jax eval and the report score


@dataclasses.dataclass
class Trajectory:
    """One finished rollout and its verdict."""
    task: Task
    record: dict  # the rollout record: token_ids, loss_mask, behaviour_logprobs, logprobs_t1, messages, ...
    reward: float
    success: bool
    domain_id: int


def make_envs(settings) -> dict:
    """{domain: environment} for config.envs.domains."""
    return {d: registry.get(d, **dict(settings.envs.options.get(d, {}))) for d in settings.envs.domains}


def step_seed(base: int, step: int, salt: int = 0) -> int:
    """A 31-bit seed per (base, step, salt): each step draws new tasks and new samples."""
    return int(np.random.SeedSequence([base, step, salt]).generate_state(1)[0] & 0x7FFFFFFF)


def draw_tasks(env, domain: str, *, n: int, horizons: Sequence[int], seed: int) -> list[Task]:
    """`n` train tasks of one domain, cycling over `horizons` (deterministic in seed)."""
    per = [n // len(horizons) + (i < n % len(horizons)) for i in range(len(horizons))]
    tasks = []
    for h, k in zip(horizons, per):
        if k:
            tasks += list(env.tasks(TRAIN_SPLIT, seed, n=k, horizon=h))
    return tasks


def sampling_params(ro) -> SamplingParams:
    return SamplingParams(temperature=ro.temperature, top_p=ro.top_p, top_k=ro.top_k, min_p=0.0,
                          presence_penalty=ro.presence_penalty, repetition_penalty=1.0)


def make_engine(cfg, params, tok, ro, *, sampling: SamplingParams | None = None):
    from a1jax.rollout.engine import make_engine as _make
    return _make(cfg, params, tok, sampling=sampling or sampling_params(ro), batch_size=ro.batch_size,
                 max_len=ro.max_len, max_new_tokens=ro.max_new_tokens)


def roll_out(engine, tok, items: Sequence[tuple[Task, object]], ro, *, seed: int,
             domain_ids: dict[str, int]) -> list[Trajectory]:
    """Rolls `engine` out on (task, env) pairs and verifies each trajectory; results in the order of `items`.

    Task ids must be unique (GRPO copies carry a '#g' suffix). The engine's cache is emptied and its key set from
    `seed` first, so the same call gives the same trajectories."""
    by_id = {t.id: (t, env) for t, env in items}
    if len(by_id) != len(items):
        raise ValueError("roll_out: task ids must be unique")
    engine.reset()
    engine.key = jax.random.PRNGKey(seed)
    loop = Rollout(engine, tok, lambda rec: Session(by_id[rec["id"]][1], by_id[rec["id"]][0]),
                   RolloutConfig(max_turns=ro.max_turns, max_tokens=ro.max_tokens, enable_thinking=ro.enable_thinking))
    records = {r["id"]: r for r in loop.run(t.prompt_record() for t, _ in items)}
    out = []
    for task, env in items:
        rec = records[task.id]
        verdict = env.verify(task, rec)
        out.append(Trajectory(task, rec, float(verdict.reward), bool(verdict.success), domain_ids[task.domain]))
    return out


# --- packing -----------------------------------------------------------------------------------------------------

def rollout_piece(traj: Trajectory, *, advantage: float | None = None, t1: bool = False) -> dict:
    """A packing piece (a1jax/data/packing.py) from a rollout: loss on the model-generated tokens only (tool
    outputs, prompts and the template stay in the context, unsupervised), plus the behaviour log-probs: the
    sampler's own, or with `t1` the T = 1 log-probs of the sampled tokens (stage 3's importance ratio with tempered
    rollouts: the student against itself at rollout time; the same values at T = 1)."""
    rec = traj.record
    behaviour = rec["logprobs_t1"] if t1 and "logprobs_t1" in rec else rec["behaviour_logprobs"]
    piece = {"tokens": np.asarray(rec["token_ids"], np.int32), "loss_mask": np.asarray(rec["loss_mask"], np.float32),
             "behavior_logp": np.asarray(behaviour, np.float32), "domain_id": traj.domain_id,
             "reward": traj.reward, "success": float(traj.success)}
    if advantage is not None:
        piece["advantages"] = np.full(len(piece["tokens"]), advantage, np.float32)
    return piece


def demo_piece(example: dict, domain_id: int) -> dict:
    """A packing piece from `chat.tokenize_trajectory` output (an expert demonstration)."""
    n = len(example["tokens"])
    return {"tokens": np.asarray(example["tokens"], np.int32),
            "loss_mask": np.asarray(example["loss_mask"], np.float32),
            "behavior_logp": np.zeros(n, np.float32), "domain_id": domain_id, "reward": 1.0, "success": 1.0}


def _truncate(piece: dict, seq_len: int) -> tuple[dict, bool]:
    """Keeps the first seq_len tokens (the loss on what is kept is unchanged: targets never look past the cut)."""
    n = len(piece["tokens"])
    if n <= seq_len:
        return piece, False
    return {k: (v[:seq_len] if isinstance(v, np.ndarray) else v) for k, v in piece.items()}, True


@dataclasses.dataclass
class Packed:
    batch: dict  # numpy [B, T] arrays: the pipeline's keys + behavior_logp (+ advantages), and reward/success [B]
    placed: list  # per row: the indices (into the input pieces) it holds, in segment order
    dropped: int  # pieces that found no room
    truncated: int  # pieces cut to seq_len


def pack(pieces: Sequence[dict], *, rows: int, seq_len: int, pad_id: int = 0, row_domains: Sequence[int] | None = None,
         one_per_row: bool = False) -> Packed:
    """First-fit packing of `pieces` into `rows` rows of `seq_len` tokens.

    row_domains[r] (optional): row r only takes pieces of that domain id, so each row belongs to one domain (the
    stage-3 batch gives every domain a fixed number of rows, and each teacher scores a fixed-shape sub-batch).
    Per-token extras (behavior_logp, advantages, off_policy) are shifted like loss_mask: position t carries the value
    of its target t + 1. reward/success [B] are the first segment's (meaningful with one_per_row, as GRPO uses).
    """
    layout: list[list[dict]] = [[] for _ in range(rows)]
    placed: list[list[int]] = [[] for _ in range(rows)]
    free = np.full(rows, seq_len, np.int64)
    dropped = truncated = 0
    for i, piece in enumerate(pieces):
        piece, cut = _truncate(piece, seq_len)
        truncated += cut
        n = len(piece["tokens"])
        ok = (free == seq_len) if one_per_row else (free >= n)
        if row_domains is not None:
            ok &= np.asarray(row_domains) == piece["domain_id"]
        where = np.flatnonzero(ok)
        if where.size == 0:
            dropped += 1
            continue
        r = int(where[0])
        layout[r].append(piece)
        placed[r].append(i)
        free[r] -= n
    batch = packing.make_batch(layout, seq_len, pad_id)
    for key in ("behavior_logp", "advantages", "off_policy"):
        if any(key in p for row in layout for p in row):
            arr = np.zeros((rows, seq_len), np.float32)
            for b, row in enumerate(layout):
                pos = 0
                for p in row:
                    n = len(p["tokens"])
                    if key in p:
                        arr[b, pos:pos + n - 1] = p[key][1:]
                    pos += n
            batch[key] = arr
    for key in ("reward", "success"):
        batch[key] = np.array([float(row[0].get(key, 0.0)) if row else 0.0 for row in layout], np.float32)
    if row_domains is not None:  # empty rows keep their domain, so the per-domain sub-batches stay fixed
        batch["domain_ids"] = np.where(batch["segment_ids"] > 0, batch["domain_ids"],
                                       np.asarray(row_domains, np.int32)[:, None])
    return Packed(batch, placed, dropped, truncated)


def halvings(seq_len: int, fits: Callable[[int], bool], shortest: int = 256) -> list[int]:
    """seq_len (already validated) and those of its exact halvings down to `shortest` that `fits` accepts (e.g. the
    mesh's sequence axis divides them), longest first: the row lengths `pack_fitted` may choose, few enough that each
    compiles once."""
    out, n = [seq_len], seq_len
    while n % 2 == 0 and n // 2 >= shortest:
        n //= 2
        if fits(n):
            out.append(n)
    return out


def pack_fitted(pieces: Sequence[dict], *, rows: int, lengths: Sequence[int], **kw) -> Packed:
    """`pack` into rows of the shortest of `lengths` that holds every piece whole, else of the longest.

    A batch of short trajectories then trains on [rows, short] arrays instead of padding every row to seq_len: the
    update and the teachers' scoring cost follow the tokens. Only padding columns go, so the step's losses are those
    of the full-length batch (up to the order of fp32 sums over a shorter row)."""
    lengths = sorted(lengths)
    for n in lengths[:-1]:
        packed = pack(pieces, rows=rows, seq_len=n, **kw)
        if not (packed.dropped or packed.truncated):
            return packed
    return pack(pieces, rows=rows, seq_len=lengths[-1], **kw)


def group_advantages(rewards: np.ndarray, group_size: int, eps: float = 1e-6) -> np.ndarray:
    """GRPO: (r - mean of the task's group) / (std of the group + eps); rewards [n_tasks * group_size], grouped
    consecutively. A group whose rewards are all equal gets advantage 0 (nothing to learn from it)."""
    r = np.asarray(rewards, np.float64).reshape(-1, group_size)
    adv = (r - r.mean(axis=1, keepdims=True)) / (r.std(axis=1, keepdims=True) + eps)
    return adv.reshape(-1).astype(np.float32)


def per_domain(values: Sequence[float], domains: Sequence[int], num_domains: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum, count) per domain id."""
    s, c = np.zeros(num_domains), np.zeros(num_domains)
    for v, d in zip(values, domains):
        s[d] += v
        c[d] += 1
    return s, c
