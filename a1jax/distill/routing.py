"""Stage-3 teachers and domain routing: every trajectory is scored by its own domain's teacher, on its exact ids.

A teacher is a frozen a1jax checkpoint in this process (`LocalTeacher`, the default: loaded from its training workdir
onto the student's mesh) or a served model (`a1jax.distill.teacher.HttpTeacher`). A teacher whose tokenizer differs
from the student's goes through `AlignedTeacher` (a1jax/distill/vocab.py: re-tokenise the student's text, score,
project the top-k back into the student's vocabulary); identical tokenizers skip all of that.

`route` gives each domain's teacher the fixed rows of its domain (the batch is domain-balanced, so every teacher sees
a fixed shape and compiles once). A teacher that raises marks its rows invalid (valid = 0) and is counted, with the
loss tokens it leaves without targets: a teacher outage never becomes silent zero targets. Every row a teacher returns
is checked (`invalid_rows`: shapes, finite non-positive log-probs, ids inside the student's vocabulary); a row that
fails is dropped (empty targets, valid = 0) and counted as a failure with its reason, so it never reaches a loss.
"""
from __future__ import annotations

import collections
import logging
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from a1jax import model
from a1jax.distill.losses import log1mexp, map_logit_chunks

log = logging.getLogger("a1jax.distill")
F32 = jnp.float32
SPARSE_KEYS = ("topk_ids", "topk_logp", "sampled_logp", "tail_logp", "valid")


def empty_targets(rows: int, seq_len: int, k: int) -> dict[str, np.ndarray]:
    """TeacherSparse with nothing valid: ids -1, log-probs -inf, tail 0 (log 1)."""
    return {"topk_ids": np.full((rows, seq_len, k), -1, np.int32),
            "topk_logp": np.full((rows, seq_len, k), -np.inf, np.float32),
            "sampled_logp": np.zeros((rows, seq_len), np.float32), "tail_logp": np.zeros((rows, seq_len), np.float32),
            "valid": np.zeros((rows, seq_len), np.float32)}


def invalid_rows(got, rows: int, seq_len: int, vocab_size: int | None, tol: float = 1e-4) -> list[str | None]:
    """Per row of a teacher's TeacherSparse `got`, None if its targets may be trained on, else the reason: "shape"
    (missing keys, wrong shapes), "nan", "inf" (+inf anywhere, -inf where a finite value is needed), "positive_logprob",
    "oov_id" (an id outside [-1, vocab_size); -1 is an empty top-k slot). Only valid positions are looked at."""
    shapes = {"sampled_logp": (rows, seq_len), "tail_logp": (rows, seq_len), "valid": (rows, seq_len)}
    try:
        arr = {key: np.asarray(got[key]) for key in SPARSE_KEYS}
        ok_shape = all(arr[key].shape == want for key, want in shapes.items())
        ok_shape &= all(arr[key].ndim == 3 and arr[key].shape[:2] == (rows, seq_len) and arr[key].shape[2] >= 1
                        for key in ("topk_ids", "topk_logp"))
        ok_shape &= arr["topk_ids"].shape == arr["topk_logp"].shape
    except (KeyError, TypeError, ValueError, IndexError):
        ok_shape = False
    if not ok_shape:
        return ["shape"] * rows
    valid = arr["valid"] > 0
    ids = arr["topk_ids"].astype(np.int64)
    lp, sampled, tail = (arr[key].astype(np.float64) for key in ("topk_logp", "sampled_logp", "tail_logp"))
    hi = np.iinfo(np.int32).max + 1 if vocab_size is None else int(vocab_size)
    v3 = valid[..., None]
    checks = (  # (reason, [rows] bool), first match wins
        ("nan", np.any(v3 & np.isnan(lp), (1, 2)) | np.any(valid & (np.isnan(sampled) | np.isnan(tail)), 1)
         | np.any(np.isnan(arr["valid"]), 1)),
        ("inf", np.any(v3 & np.isposinf(lp), (1, 2)) | np.any(valid & ~np.isfinite(sampled), 1)
         | np.any(valid & np.isposinf(tail), 1)),
        ("positive_logprob", np.any(v3 & (lp > tol), (1, 2)) | np.any(valid & ((sampled > tol) | (tail > tol)), 1)),
        ("oov_id", np.any(v3 & ((ids < -1) | (ids >= hi)), (1, 2))),
    )
    out: list[str | None] = [None] * rows
    for reason, bad in checks:
        for r in np.flatnonzero(bad):
            out[r] = out[r] or reason
    return out


def _bucket(n: int, quantum: int = 256) -> int:
    return max(quantum, -(-n // quantum) * quantum)


def score_positions(params, cfg, batch: dict, flat_idx, *, k: int, chunk: int) -> dict:
    """The teacher's sparse targets at flat positions `flat_idx` [M] of a [B, T] batch, from one forward pass.

    The same quantities as `a1jax.distill.teacher.score` (which scores every position), but the LM head runs only
    on the M selected positions: in agentic rollouts most positions are prompt, template or tool output, so this
    skips most of the [positions, V] work (the vocabulary is 248K). Returns [M]- and [M, K]-shaped arrays."""
    params = jax.lax.stop_gradient(params)
    out = model.forward(params, batch["tokens"], cfg, positions=batch["positions"],
                        segment_ids=batch["segment_ids"], return_logits=False)
    B, T, D = out.hidden.shape
    hidden = out.hidden.reshape(B * T, D)[flat_idx][None]  # [1, M, D]
    targets = batch["targets"].reshape(B * T)[flat_idx][None]

    def per_chunk(logits, tgt):
        logp = jax.nn.log_softmax(logits, axis=-1)
        topk_logp, topk_ids = jax.lax.top_k(logp, k)
        sampled = jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
        return topk_ids.astype(jnp.int32), topk_logp, sampled, log1mexp(jax.nn.logsumexp(topk_logp, axis=-1))

    ids, lp, sampled, tail = map_logit_chunks(per_chunk, hidden, model.lm_head_weight(params, cfg), targets,
                                              chunk=chunk, remat=False)
    return {"topk_ids": ids[0], "topk_logp": lp[0], "sampled_logp": sampled[0], "tail_logp": tail[0]}


class LocalTeacher:
    """A frozen a1jax teacher from a training workdir (its newest checkpoint), scored in this process.

    mesh/rules: place the teacher's parameters on the student's mesh by their logical axes (None: default device).
    Scores the positions whose loss_mask is 1 (the student's generated tokens), never the whole [T, V]."""

    def __init__(self, workdir: str, *, k: int, chunk: int = 256, mesh=None, rules=None, params=None, cfg=None):
        from a1jax.train.checkpoint import load_trained_params
        if params is None:
            cfg, params = load_trained_params(workdir)
        self.cfg, self.k, self.chunk, self.name = cfg, int(k), int(chunk), workdir
        if mesh is not None:
            from a1jax.train.state import state_shardings
            params = jax.device_put(params, state_shardings(params, mesh, rules or {}))
        self.params = model.unbox(params)
        self._fn = jax.jit(lambda p, b, idx: score_positions(p, cfg, b, idx, k=self.k, chunk=self.chunk))

    def score(self, batch: dict) -> tuple[dict, dict]:
        """(TeacherSparse numpy [B, T(, K)], stats) for a packed batch (tokens, targets, positions, segment_ids,
        loss_mask). Positions outside loss_mask stay invalid."""
        B, T = batch["tokens"].shape
        out = empty_targets(B, T, self.k)
        flat = np.flatnonzero(np.asarray(batch["loss_mask"]).reshape(-1) > 0)
        if flat.size:
            idx = np.zeros(_bucket(flat.size), np.int32)  # padded to a bucket: a handful of compiled shapes
            idx[:flat.size] = flat
            arrays = {key: jnp.asarray(batch[key]) for key in ("tokens", "targets", "positions", "segment_ids")}
            got = jax.device_get(self._fn(self.params, arrays, jnp.asarray(idx)))
            for key in ("topk_ids", "topk_logp", "sampled_logp", "tail_logp"):
                view = out[key].reshape(B * T, *out[key].shape[2:])
                view[flat] = got[key][:flat.size]
            out["valid"].reshape(-1)[flat] = 1.0
        return out, {"requests": 1, "failed": 0}

    def score_sequences(self, seqs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per sequence of teacher ids [n]: (topk_ids [n, K], topk_logp [n, K], sampled_logp [n]); row j scores token
        j + 1 (the last row has no target: sampled 0). One sequence per row of a padded batch."""
        n_max = _bucket(max(len(s) for s in seqs), 64)
        B = len(seqs)
        tokens, targets = np.zeros((B, n_max), np.int32), np.zeros((B, n_max), np.int32)
        seg, pos, mask = np.zeros_like(tokens), np.zeros_like(tokens), np.zeros((B, n_max), np.float32)
        for b, s in enumerate(seqs):
            n = len(s)
            tokens[b, :n], targets[b, :n - 1], seg[b, :n], pos[b, :n] = s, s[1:], 1, np.arange(n)
            mask[b, :n] = 1.0
        out, _ = self.score({"tokens": tokens, "targets": targets, "positions": pos, "segment_ids": seg,
                             "loss_mask": mask})
        res = []
        for b, s in enumerate(seqs):
            n = len(s)
            sampled = out["sampled_logp"][b, :n].copy()
            sampled[n - 1] = 0.0
            res.append((out["topk_ids"][b, :n], out["topk_logp"][b, :n], sampled))
        return res


class HttpSequences:
    """`score_sequences` over an HttpTeacher (one request per sequence, ids in the teacher's own vocabulary)."""

    def __init__(self, http):
        self.http, self.k = http, http.k

    def score_sequences(self, seqs):
        res = []
        for s in seqs:
            ids, lp, sampled, _ = self.http.parse_response(self.http._post(self.http.build_request(s)), s)
            pad = lambda a, fill: np.concatenate([a, np.full((1, *a.shape[1:]), fill, a.dtype)])
            res.append((pad(ids, -1), pad(lp, -np.inf), pad(sampled, 0.0)))
        return res


class AlignedTeacher:
    """A teacher with another tokenizer: each student segment is re-tokenised for the teacher (vocab.Aligner),
    scored there, and its top-k projected back onto the student's positions (k:m groups masked or chain-merged)."""

    def __init__(self, inner, aligner, *, kxm: str = "mask"):
        self.inner, self.aligner, self.kxm, self.k = inner, aligner, kxm, inner.k

    def score(self, batch: dict) -> tuple[dict, dict]:
        tokens, seg = np.asarray(batch["tokens"]), np.asarray(batch["segment_ids"])
        B, T = tokens.shape
        out = empty_targets(B, T, self.k)
        where, aligns = [], []
        for b in range(B):
            for s in np.unique(seg[b][seg[b] > 0]):
                idx = np.flatnonzero(seg[b] == s)
                where.append((b, idx))
                aligns.append(self.aligner.teacher_ids_for(tokens[b, idx]))
        if not aligns:
            return out, {"requests": 0, "failed": 0}
        scored = self.inner.score_sequences([a.teacher_ids for a in aligns])
        for (b, idx), a, (t_ids, t_lp, t_sampled) in zip(where, aligns, scored):
            proj = self.aligner.project(a, t_ids, t_lp, t_sampled, kxm=self.kxm)
            for key in SPARSE_KEYS:
                value = proj[key]
                if key in ("topk_ids", "topk_logp"):
                    k = min(self.k, value.shape[1])
                    out[key][b, idx, :k] = value[:, :k]
                else:
                    out[key][b, idx] = value
        out["valid"] *= np.asarray(batch["loss_mask"]) > 0
        return out, {"requests": len(aligns), "failed": 0}


def make_teacher(spec, student_tok, *, chunk: int, mesh=None, rules=None, vocab_size: int | None = None):
    """The teacher of one `settings.TeacherSpec`; `vocab_size`: the student's (ids a same-tokenizer teacher may
    return)."""
    from a1jax.data import tokenizers
    from a1jax.distill.vocab import Aligner
    tok = tokenizers.load(spec.tokenizer) if spec.tokenizer else student_tok
    aligner = None if tok is student_tok else Aligner(tok, student_tok)
    if aligner is not None and aligner.identity:
        aligner = None
    if spec.url:
        from a1jax.distill.teacher import HttpTeacher
        http = HttpTeacher(spec.url, spec.timeout, k=spec.k, vocab_size=vocab_size if aligner is None else None)
        return http if aligner is None else AlignedTeacher(HttpSequences(http), aligner, kxm=spec.kxm)
    from a1jax.train import vocabulary
    vocabulary.check(spec.workdir, tok, f"teacher of {spec.domain}")
    local = LocalTeacher(spec.workdir, k=spec.k, chunk=chunk, mesh=mesh, rules=rules)
    return local if aligner is None else AlignedTeacher(local, aligner, kxm=spec.kxm)


def route(teachers: dict[int, object], batch: dict, row_domains: Sequence[int], k: int,
          vocab_size: int | None = None) -> tuple[dict, dict]:
    """Domain routing: rows of domain d get teacher d's targets. Returns (TeacherSparse numpy [B, T(, k)], stats)
    with stats[d] = {"failures", "invalid_tokens", "requests", "reasons": {reason: count}}; a teacher that raises
    leaves its rows invalid, and a row whose targets fail `invalid_rows` is dropped and counted."""
    B, T = batch["tokens"].shape
    out = empty_targets(B, T, k)
    row_domains = np.asarray(row_domains)
    stats = {}
    for d, teacher in teachers.items():
        rows = np.flatnonzero(row_domains == d)
        st = stats[d] = {"failures": 0, "invalid_tokens": 0, "requests": 0, "reasons": collections.Counter()}
        if rows.size == 0:
            continue
        sub = {key: np.asarray(v)[rows] for key, v in batch.items() if np.ndim(v) == 2}
        mask = sub["loss_mask"] > 0
        if not mask.any():
            continue
        try:
            got, info = teacher.score(sub)
        except Exception as e:  # noqa: BLE001 - any teacher failure: its rows train on nothing, and it is counted
            from a1jax.distill.teacher import failure_reason
            log.warning("teacher of domain %d failed on %d rows: %s: %s", d, rows.size, type(e).__name__,
                        str(e)[:300])
            st["failures"] += 1
            st["reasons"][failure_reason(e)] += 1
            st["invalid_tokens"] += int(mask.sum())
            continue
        st["requests"] += int(info.get("requests", 1))
        st["failures"] += int(info.get("failed", 0))
        st["reasons"].update(info.get("reasons", {}))
        bad = invalid_rows(got, rows.size, T, vocab_size)
        if any(bad):
            log.warning("teacher of domain %d: %d of %d rows dropped (%s)", d, sum(map(bool, bad)), rows.size,
                        ", ".join(sorted({b for b in bad if b})))
        for i, (r, reason) in enumerate(zip(rows, bad)):
            if reason is not None:  # dropped: stays empty targets with valid = 0
                st["failures"] += 1
                st["reasons"][reason] += 1
                st["invalid_tokens"] += int(mask[i].sum())
                continue
            kk = min(k, got["topk_ids"].shape[-1])
            out["topk_ids"][r, :, :kk] = got["topk_ids"][i, :, :kk]
            out["topk_logp"][r, :, :kk] = got["topk_logp"][i, :, :kk]
            for key in ("sampled_logp", "tail_logp", "valid"):
                out[key][r] = got[key][i]
            out["valid"][r] *= mask[i]
            st["invalid_tokens"] += int((mask[i] & (out["valid"][r] == 0)).sum())
        # positions outside `valid` may hold anything: reset them so that no NaN can reach the loss through 0 * NaN
        invalid = out["valid"][rows] == 0
        for key, fill in (("topk_ids", -1), ("topk_logp", -np.inf), ("sampled_logp", 0.0), ("tail_logp", 0.0)):
            view = out[key][rows]
            view[invalid] = fill
            out[key][rows] = view
    return out, stats
