"""Stage-3 teachers and domain routing: the teacher clients (a frozen a1jax checkpoint in this process, a served model
over HTTP, a teacher with another tokenizer) and `route`, which scores every trajectory with its own domain's teacher.

Every teacher returns a TeacherSparse dict (docs/spec/recipe.md §6.1) on the *exact* student token ids (never
re-tokenised text): per position the teacher's log-prob of the target token, its top-k ids and log-probs, and the log
of the mass outside the top-k.

A teacher is a frozen a1jax checkpoint in this process (`LocalTeacher`, the default: loaded from its training workdir
onto the student's mesh; `score` scores every position of a batch) or a served model (`HttpTeacher`). A teacher whose
tokenizer differs from the student's goes through `AlignedTeacher` (a1jax/distill/vocab.py: re-tokenise the
student's text, score, project the top-k back into the student's vocabulary); identical tokenizers skip all of that.

`route` gives each domain's teacher the fixed rows of its domain (the batch is domain-balanced, so every teacher sees
a fixed shape and compiles once). A teacher that raises marks its rows invalid (valid = 0) and is counted, with the
loss tokens it leaves without targets: a teacher outage never becomes silent zero targets. Every row a teacher returns
is checked (`invalid_rows`: shapes, finite non-positive log-probs, ids inside the student's vocabulary); a row that
fails is dropped (empty targets, valid = 0) and counted as a failure with its reason, so it never reaches a loss.
"""
from __future__ import annotations

import collections
import http.client
import json
import logging
import math
import socket
import threading
import time
import urllib.parse
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from a1jax import model
from a1jax.distill.losses import log1mexp, map_logit_chunks
from a1jax.model.config import ModelConfig

log = logging.getLogger("a1jax.distill")
F32 = jnp.float32
SPARSE_KEYS = ("topk_ids", "topk_logp", "sampled_logp", "tail_logp", "valid")
MAX_ID = 2 ** 31 - 1  # ids are int32 on the device
LOGP_TOL = 1e-4  # a log-prob above this is not a log-prob (rounding may leave a certain token at +1e-7)


class InvalidTeacherResponse(ValueError):
    """A teacher response that must not become a target; `reason` is its metric name (teacher_failures/D/REASON)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def failure_reason(e: BaseException) -> str:
    """The metric name of a failed teacher request: timeout, connection, http, or the response's own reason."""
    if isinstance(e, InvalidTeacherResponse):
        return e.reason
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(e, http.client.HTTPException):  # IncompleteRead, BadStatusLine, RemoteDisconnected, ...
        return "http"
    if isinstance(e, OSError):
        return "connection"
    return "malformed"  # JSON that does not parse, entries of the wrong type or shape


def check_logprob(x, where: str, *, allow_neg_inf: bool = False) -> float:
    """`x` as a float, if it is a log-prob (finite, or -inf where allowed, and not above 0)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise InvalidTeacherResponse("malformed", f"{where}: {x!r} is not a number") from None
    if math.isnan(v):
        raise InvalidTeacherResponse("nan", f"{where}: log-prob is NaN")
    if math.isinf(v) and not (allow_neg_inf and v < 0):
        raise InvalidTeacherResponse("inf", f"{where}: log-prob is {v}")
    if v > LOGP_TOL:
        raise InvalidTeacherResponse("positive_logprob", f"{where}: log-prob {v} > 0")
    return v


def check_id(x, where: str, vocab_size: int | None) -> int:
    """`x` as a token id in [0, vocab_size) (or [0, 2^31) without a vocabulary size)."""
    try:
        v = int(x)
    except (TypeError, ValueError):
        raise InvalidTeacherResponse("malformed", f"{where}: token id {x!r} is not an integer") from None
    hi = MAX_ID + 1 if vocab_size is None else min(int(vocab_size), MAX_ID + 1)
    if not 0 <= v < hi:
        raise InvalidTeacherResponse("oov_id", f"{where}: token id {v} outside [0, {hi})")
    return v


def score(params, cfg: ModelConfig, batch: dict, *, k: int, chunk: int) -> dict:
    """One forward pass of a frozen teacher over batch["tokens"] -> TeacherSparse, computed in T-chunks. Jittable.

    batch: tokens, targets, positions, segment_ids [B,T]. valid = 1 on non-padding positions; the caller's
    loss_mask decides which of them are trained on.
    """
    params = jax.lax.stop_gradient(params)
    out = model.forward(params, batch["tokens"], cfg, positions=batch["positions"], segment_ids=batch["segment_ids"],
                        return_logits=False)

    def per_chunk(logits, targets):
        logp = jax.nn.log_softmax(logits, axis=-1)
        topk_logp, topk_ids = jax.lax.top_k(logp, k)
        sampled = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return topk_ids.astype(jnp.int32), topk_logp, sampled, log1mexp(jax.nn.logsumexp(topk_logp, axis=-1))

    topk_ids, topk_logp, sampled, tail = map_logit_chunks(per_chunk, out.hidden, model.lm_head_weight(params, cfg),
                                                          batch["targets"], chunk=chunk, remat=False)
    return {"topk_ids": topk_ids, "topk_logp": topk_logp, "sampled_logp": sampled, "tail_logp": tail,
            "valid": (batch["segment_ids"] != 0).astype(F32)}


class HttpTeacher:
    """A teacher behind an OpenAI/vLLM-style /v1/completions endpoint that returns `prompt_logprobs`.

    Each (row, segment) of a packed batch is one request: the segment's exact token ids as the prompt, max_tokens=1,
    temperature 1 (vLLM's prompt log-probs ignore temperature anyway, verl PR #5592), prompt_logprobs=k. A failed or
    timed-out request, or a response that is not valid targets (NaN, infinite or positive log-probs, ids outside the
    vocabulary, entries of the wrong shape) marks that segment's positions valid=0 and is counted in the returned
    stats with its reason: a teacher outage never turns into silent zero targets, a broken one never into a loss.

    `timeout` bounds the whole request (connect, send, every read of the response): a server that trickles bytes is
    cut off at the deadline. `vocab_size`: the student's vocabulary (ids the response may name; with `vocab_map`, the
    range of the mapped ids).
    """

    def __init__(self, url: str, timeout: float = 60.0, *, model_name: str = "teacher", k: int = 20,
                 vocab_map: np.ndarray | None = None, vocab_size: int | None = None):
        self.url, self.timeout, self.model_name, self.k = url, float(timeout), model_name, int(k)
        self.vocab_map = None if vocab_map is None else np.asarray(vocab_map, np.int64)
        self.vocab_size = None if vocab_size is None else int(vocab_size)

    def build_request(self, token_ids) -> dict:
        return {"model": self.model_name, "prompt": [int(t) for t in token_ids], "max_tokens": 1,
                "temperature": 1.0, "prompt_logprobs": self.k}

    def _post(self, payload: dict) -> dict:
        """POSTs `payload`, returns the JSON body; TimeoutError once `timeout` seconds have passed since the start,
        however the server spreads its bytes (a watchdog shuts the socket at the deadline)."""
        u = urllib.parse.urlsplit(self.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise InvalidTeacherResponse("connection", f"teacher url {self.url!r}: expected http(s)://HOST[:PORT]/PATH")
        deadline = time.monotonic() + self.timeout
        conn_cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(u.hostname, u.port, timeout=self.timeout)
        fired = threading.Event()

        def cut():
            fired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(self.timeout, cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            path = u.path or "/"
            conn.request("POST", path + (f"?{u.query}" if u.query else ""), body=json.dumps(payload).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()  # IncompleteRead if the body is shorter than its Content-Length
            if fired.is_set() or time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}: response not complete after {self.timeout:g} s")
            if resp.status != 200:
                raise http.client.HTTPException(f"{self.url}: HTTP {resp.status} {resp.reason}")
            return json.loads(body)
        except (OSError, http.client.HTTPException, ValueError) as e:
            if fired.is_set() or time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}: no complete response within {self.timeout:g} s "
                                   f"({type(e).__name__})") from None
            raise
        finally:
            watchdog.cancel()
            conn.close()

    def parse_response(self, response: dict, token_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """prompt_logprobs -> (topk_ids [n-1,K], topk_logp [n-1,K], sampled_logp [n-1], tail_logp [n-1]).

        Entry j (j >= 1) of vLLM's `choices[0].prompt_logprobs` holds {token_id: {"logprob", "rank", ...}} for the
        token at j: the actual token plus the top-k. Row j-1 of the result belongs to the position whose *target* is
        token j. Top-k ids go through `vocab_map` (-1 = unmapped: its mass joins the tail).
        """
        n, K = len(token_ids), self.k
        try:
            entries = response["choices"][0]["prompt_logprobs"]
        except (KeyError, IndexError, TypeError):
            keys = sorted(response)[:8] if isinstance(response, dict) else type(response).__name__
            raise InvalidTeacherResponse("shape", f"response has no choices[0].prompt_logprobs; keys: {keys}"
                                         ) from None
        if not isinstance(entries, list) or len(entries) != n:
            got = len(entries) if isinstance(entries, list) else type(entries).__name__
            raise InvalidTeacherResponse("shape", f"prompt_logprobs has {got} entries; expected one per prompt "
                                                  f"token ({n})")
        ids = np.full((max(n - 1, 0), K), -1, np.int32)
        logp = np.full((max(n - 1, 0), K), -np.inf, np.float32)
        sampled = np.zeros((max(n - 1, 0),), np.float32)
        tail = np.zeros((max(n - 1, 0),), np.float32)
        raw_vocab = None if self.vocab_map is not None else self.vocab_size  # mapped ids are checked after the map
        for j in range(1, n):
            entry = self._entry(entries[j], j, raw_vocab)
            actual = int(token_ids[j])
            if actual not in entry:
                raise InvalidTeacherResponse("shape", f"prompt_logprobs[{j}] lacks the prompt token {actual}")
            if not math.isfinite(entry[actual]["logprob"]):
                raise InvalidTeacherResponse("inf", f"prompt_logprobs[{j}]: the prompt token {actual} has log-prob "
                                                    f"{entry[actual]['logprob']}")
            sampled[j - 1] = entry[actual]["logprob"]
            ranked = sorted(entry.items(), key=lambda kv: (kv[1]["rank"], -kv[1]["logprob"]))[:K]
            top_ids = np.array([t for t, _ in ranked], np.int64)
            top_lp = np.array([float(v["logprob"]) for _, v in ranked], np.float64)
            if self.vocab_map is not None:
                inside = top_ids < len(self.vocab_map)
                top_ids = np.where(inside, self.vocab_map[np.where(inside, top_ids, 0)], -1)
                if self.vocab_size is not None and np.any(top_ids >= self.vocab_size):
                    raise InvalidTeacherResponse("oov_id", f"prompt_logprobs[{j}]: vocab_map sends an id past the "
                                                           f"student's vocabulary ({self.vocab_size})")
            kept = top_ids >= 0
            ids[j - 1, :len(ranked)] = np.where(kept, top_ids, -1)
            logp[j - 1, :len(ranked)] = np.where(kept, top_lp, -np.inf)
            mass = float(np.exp(top_lp[kept]).sum()) if kept.any() else 0.0
            tail[j - 1] = math.log(max(1.0 - mass, 1e-12)) if mass < 1.0 else math.log(1e-12)
        return ids, logp, sampled, tail

    @staticmethod
    def _entry(entry, j: int, vocab_size: int | None) -> dict[int, dict]:
        """One position of prompt_logprobs, checked: {id: {"logprob": float, "rank": float}}."""
        if entry is None:
            return {}
        if not isinstance(entry, dict):
            raise InvalidTeacherResponse("shape", f"prompt_logprobs[{j}] is a {type(entry).__name__}, expected "
                                                  f"{{token id: {{logprob, rank}}}}")
        out = {}
        for t, v in entry.items():
            where = f"prompt_logprobs[{j}][{t!r}]"
            if not isinstance(v, dict) or "logprob" not in v:
                raise InvalidTeacherResponse("shape", f"{where} is {v!r:.80}, expected {{logprob, rank}}")
            rank = v.get("rank")
            out[check_id(t, where, vocab_size)] = {
                "logprob": check_logprob(v["logprob"], where, allow_neg_inf=True),
                "rank": float(rank) if isinstance(rank, (int, float)) and not isinstance(rank, bool) else math.inf}
        return out

    def score(self, batch: dict) -> tuple[dict, dict]:
        """Numpy TeacherSparse for a packed batch (tokens, segment_ids [B,T], loss_mask optional), and stats:
        requests, failed, invalid_tokens (loss-masked tokens left without a teacher)."""
        tokens, seg = np.asarray(batch["tokens"]), np.asarray(batch["segment_ids"])
        B, T = tokens.shape
        K = self.k
        out = {"topk_ids": np.full((B, T, K), -1, np.int32), "topk_logp": np.full((B, T, K), -np.inf, np.float32),
               "sampled_logp": np.zeros((B, T), np.float32), "tail_logp": np.zeros((B, T), np.float32),
               "valid": np.zeros((B, T), np.float32)}
        stats = {"requests": 0, "failed": 0, "errors": [], "reasons": collections.Counter()}
        for b in range(B):
            for s in np.unique(seg[b]):
                if s == 0:
                    continue
                idx = np.nonzero(seg[b] == s)[0]
                ids = tokens[b, idx]
                stats["requests"] += 1
                try:
                    parsed = self.parse_response(self._post(self.build_request(ids)), ids)
                except Exception as e:  # noqa: BLE001 - any failed request or invalid response: counted, not trained on
                    stats["failed"] += 1
                    stats["reasons"][failure_reason(e)] += 1
                    stats["errors"].append(f"row {b} segment {int(s)}: {type(e).__name__}: {str(e)[:300]}")
                    continue
                at = idx[:-1]  # the last position of a segment has no target inside it
                for key, value in zip(("topk_ids", "topk_logp", "sampled_logp", "tail_logp"), parsed):
                    out[key][b, at] = value
                out["valid"][b, at] = 1.0
        mask = np.asarray(batch.get("loss_mask", seg != 0)) > 0
        stats["invalid_tokens"] = int(np.sum(mask & (out["valid"] == 0)))
        return out, stats



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


def position_bucket(n: int, least: int = 256) -> int:
    """The number of scored positions `n` padded to: the next power of two (at least `least`). Each size is one
    compiled program, and a rollout batch's generated tokens vary: padded to multiples of 256 instead, nearly every
    batch of the tiny stage 3 compiled each teacher's scoring again (19-34 s a batch against about 3 s)."""
    return max(least, 1 << (max(n, 1) - 1).bit_length())


def score_positions(params, cfg, batch: dict, flat_idx, *, k: int, chunk: int) -> dict:
    """The teacher's sparse targets at flat positions `flat_idx` [M] of a [B, T] batch, from one forward pass.

    The same quantities as `score` (which scores every position), but the LM head runs only
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
            idx = np.zeros(position_bucket(flat.size), np.int32)  # a handful of compiled shapes
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
