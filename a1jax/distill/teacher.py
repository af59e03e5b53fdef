"""Teacher targets for on-policy distillation: a frozen a1jax teacher scored in-process, or a served one over HTTP.

Both return a TeacherSparse dict (recipe.md §6.1) on the *exact* student token ids (never re-tokenised text):
per position the teacher's log-prob of the target token, its top-k ids and log-probs, and the log of the mass
outside the top-k. Both assume the teacher shares the student's tokenizer; a teacher with another vocabulary goes
through a1jax/distill/vocab.py first.
"""
from __future__ import annotations

import json
import math
import socket
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np

from a1jax import model
from a1jax.distill.losses import log1mexp, map_logit_chunks
from a1jax.model.config import ModelConfig

F32 = jnp.float32


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
    timed-out request, or a response that cannot be parsed, marks that segment's positions valid=0 and is counted in
    the returned stats: a teacher outage never turns into silent zero targets.
    """

    def __init__(self, url: str, timeout: float = 60.0, *, model_name: str = "teacher", k: int = 20,
                 vocab_map: np.ndarray | None = None):
        self.url, self.timeout, self.model_name, self.k = url, float(timeout), model_name, int(k)
        self.vocab_map = None if vocab_map is None else np.asarray(vocab_map, np.int64)

    def build_request(self, token_ids) -> dict:
        return {"model": self.model_name, "prompt": [int(t) for t in token_ids], "max_tokens": 1,
                "temperature": 1.0, "prompt_logprobs": self.k}

    def _post(self, payload: dict) -> dict:
        req = urllib.request.Request(self.url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read())

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
            raise ValueError(f"response has no choices[0].prompt_logprobs; keys: {sorted(response)[:8]}") from None
        if not isinstance(entries, list) or len(entries) != n:
            got = len(entries) if isinstance(entries, list) else type(entries).__name__
            raise ValueError(f"prompt_logprobs has {got} entries; expected one per prompt token ({n})")
        ids = np.full((max(n - 1, 0), K), -1, np.int32)
        logp = np.full((max(n - 1, 0), K), -np.inf, np.float32)
        sampled = np.zeros((max(n - 1, 0),), np.float32)
        tail = np.zeros((max(n - 1, 0),), np.float32)
        for j in range(1, n):
            entry = {int(t): v for t, v in (entries[j] or {}).items()}
            actual = int(token_ids[j])
            if actual not in entry:
                raise ValueError(f"prompt_logprobs[{j}] lacks the prompt token {actual}")
            sampled[j - 1] = float(entry[actual]["logprob"])
            ranked = sorted(entry.items(), key=lambda kv: (kv[1].get("rank") or math.inf, -kv[1]["logprob"]))[:K]
            top_ids = np.array([t for t, _ in ranked], np.int64)
            top_lp = np.array([float(v["logprob"]) for _, v in ranked], np.float64)
            if self.vocab_map is not None:
                inside = top_ids < len(self.vocab_map)
                top_ids = np.where(inside, self.vocab_map[np.where(inside, top_ids, 0)], -1)
            kept = top_ids >= 0
            ids[j - 1, :len(ranked)] = np.where(kept, top_ids, -1)
            logp[j - 1, :len(ranked)] = np.where(kept, top_lp, -np.inf)
            mass = float(np.exp(top_lp[kept]).sum()) if kept.any() else 0.0
            tail[j - 1] = math.log(max(1.0 - mass, 1e-12)) if mass < 1.0 else math.log(1e-12)
        return ids, logp, sampled, tail

    def score(self, batch: dict) -> tuple[dict, dict]:
        """Numpy TeacherSparse for a packed batch (tokens, segment_ids [B,T], loss_mask optional), and stats:
        requests, failed, invalid_tokens (loss-masked tokens left without a teacher)."""
        tokens, seg = np.asarray(batch["tokens"]), np.asarray(batch["segment_ids"])
        B, T = tokens.shape
        K = self.k
        out = {"topk_ids": np.full((B, T, K), -1, np.int32), "topk_logp": np.full((B, T, K), -np.inf, np.float32),
               "sampled_logp": np.zeros((B, T), np.float32), "tail_logp": np.zeros((B, T), np.float32),
               "valid": np.zeros((B, T), np.float32)}
        stats = {"requests": 0, "failed": 0, "errors": []}
        for b in range(B):
            for s in np.unique(seg[b]):
                if s == 0:
                    continue
                idx = np.nonzero(seg[b] == s)[0]
                ids = tokens[b, idx]
                stats["requests"] += 1
                try:
                    parsed = self.parse_response(self._post(self.build_request(ids)), ids)
                except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError,
                        ValueError, KeyError, TypeError) as e:
                    stats["failed"] += 1
                    stats["errors"].append(f"row {b} segment {int(s)}: {type(e).__name__}: {e}")
                    continue
                at = idx[:-1]  # the last position of a segment has no target inside it
                for key, value in zip(("topk_ids", "topk_logp", "sampled_logp", "tail_logp"), parsed):
                    out[key][b, at] = value
                out["valid"][b, at] = 1.0
        mask = np.asarray(batch.get("loss_mask", seg != 0)) > 0
        stats["invalid_tokens"] = int(np.sum(mask & (out["valid"] == 0)))
        return out, stats

