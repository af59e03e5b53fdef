"""Teacher targets for on-policy distillation: a frozen a1jax teacher scored in-process, or a served one over HTTP.

Both return a TeacherSparse dict (docs/spec/recipe.md §6.1) on the *exact* student token ids (never re-tokenised text):
per position the teacher's log-prob of the target token, its top-k ids and log-probs, and the log of the mass
outside the top-k. Both assume the teacher shares the student's tokenizer; a teacher with another vocabulary goes
through a1jax/distill/vocab.py first.
"""
from __future__ import annotations

import collections
import http.client
import json
import math
import socket
import threading
import time
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np

from a1jax import model
from a1jax.distill.losses import log1mexp, map_logit_chunks
from a1jax.model.config import ModelConfig

F32 = jnp.float32
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

