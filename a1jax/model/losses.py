"""Token log-probabilities and losses from hidden states, in sequence chunks.

The vocabulary is 248,320: [T, V] fp32 logits for a 262K-token row would be 260 GB. `token_logprobs` projects one
chunk of positions at a time under `jax.checkpoint`, so neither the forward nor the backward pass ever holds more
than [B, chunk, V] logits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from a1jax.model.config import ModelConfig
from a1jax.model.transformer import Output, lm_head_weight

F32 = jnp.float32


def token_logprobs(hidden, w_out, targets, chunk_size: int):
    """log p(targets) and logsumexp of the logits, both [B,T] fp32. hidden [B,T,H]; w_out [H,V]; targets [B,T]."""
    B, T, H = hidden.shape
    c = min(chunk_size, T)
    n = -(-T // c)
    pad = n * c - T
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    w = w_out.astype(hidden.dtype)

    @jax.checkpoint
    def one_chunk(xs):
        h, t = xs  # [B,c,H], [B,c]
        logits = jnp.einsum("bch,hv->bcv", h, w, preferred_element_type=F32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        return jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0] - lse, lse

    hs = hidden.reshape(B, n, c, H).swapaxes(0, 1)
    ts = targets.reshape(B, n, c).swapaxes(0, 1)
    logp, lse = jax.lax.map(one_chunk, (hs, ts))
    unchunk = lambda a: a.swapaxes(0, 1).reshape(B, n * c)[:, :T]
    return unchunk(logp), unchunk(lse)


def mtp_targets(targets, loss_mask, segment_ids):
    """The MTP head at position t predicts token t+2 = targets[t+1], valid if t+1 lies in t's segment."""
    shift = lambda a: jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], axis=1)
    same = (shift(segment_ids) == segment_ids) & (segment_ids != 0)
    return shift(targets), shift(loss_mask).astype(F32) * same.astype(F32)


def mtp_nll(params, out: Output, targets, loss_mask, segment_ids, cfg: ModelConfig):
    """(sum, count) of the MTP cross-entropy; `out` must come from forward(..., mtp=True)."""
    t, m = mtp_targets(targets, loss_mask, segment_ids)
    logp, _ = token_logprobs(out.mtp_hidden, lm_head_weight(params, cfg), t, cfg.loss_chunk_size)
    return -jnp.sum(logp * m), jnp.sum(m)
