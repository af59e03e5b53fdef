"""Token log-probabilities and losses from hidden states, in sequence chunks.

The vocabulary is 248,320: [T, V] fp32 logits for a 262K-token row would be 260 GB. `token_logprobs` projects one
chunk of positions at a time under `jax.checkpoint`, so neither the forward nor the backward pass ever holds more
than [chunk, V] logits.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from a1jax.model.config import ModelConfig
from a1jax.model.transformer import Output, lm_head_weight

F32 = jnp.float32


def token_logprobs(hidden, w_out, targets, chunk_size: int, mask=None):
    """log p(targets) and logsumexp of the logits, both [B,T] fp32. hidden [B,T,H]; w_out [H,V]; targets [B,T].

    With `mask` [B,T], only masked-in positions are computed (the others return 0): positions are first gathered so
    that masked-in ones come first, and a chunk with no masked-in position skips its [chunk, V] projection. In agentic
    SFT most tokens are tool output or user text, so this removes most of the vocabulary work. Exact: the loss is a
    sum over positions, and their order does not matter.
    """
    B, T, H = hidden.shape
    N = B * T
    c = min(chunk_size, N)
    n = -(-N // c)
    pad = n * c - N
    h_flat, t_flat = hidden.reshape(N, H), targets.reshape(N)
    if mask is not None:
        keep = mask.reshape(N) != 0
        order = jnp.argsort(~keep, stable=True)  # masked-in positions first, in their original order
        h_flat, t_flat, keep = h_flat[order], t_flat[order], keep[order]
    else:
        keep = jnp.ones((N,), bool)
    if pad:
        h_flat = jnp.pad(h_flat, ((0, pad), (0, 0)))
        t_flat, keep = jnp.pad(t_flat, (0, pad)), jnp.pad(keep, (0, pad))
    w = w_out.astype(hidden.dtype)

    @jax.checkpoint
    def one_chunk(xs):
        h, t, k = xs  # [c,H], [c], [c]

        def compute(h, t):
            logits = jnp.einsum("ch,hv->cv", h, w, preferred_element_type=F32)
            lse = jax.nn.logsumexp(logits, axis=-1)
            return jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0] - lse, lse

        skip = lambda h, t: (jnp.zeros((c,), F32), jnp.zeros((c,), F32))
        return jax.lax.cond(jnp.any(k), compute, skip, h, t)

    logp, lse = jax.lax.map(one_chunk, (h_flat.reshape(n, c, H), t_flat.reshape(n, c), keep.reshape(n, c)))
    logp, lse = logp.reshape(n * c)[:N], lse.reshape(n * c)[:N]
    if mask is not None:
        inverse = jnp.argsort(order)
        logp, lse = logp[inverse], lse[inverse]
    return logp.reshape(B, T), lse.reshape(B, T)


def mtp_targets(targets, loss_mask, segment_ids):
    """The MTP head at position t predicts token t+2 = targets[t+1], valid if t+1 lies in t's segment."""
    shift = lambda a: jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], axis=1)
    same = (shift(segment_ids) == segment_ids) & (segment_ids != 0)
    return shift(targets), shift(loss_mask).astype(F32) * same.astype(F32)


def mtp_nll(params, out: Output, targets, loss_mask, segment_ids, cfg: ModelConfig):
    """(sum, count) of the MTP cross-entropy; `out` must come from forward(..., mtp=True)."""
    t, m = mtp_targets(targets, loss_mask, segment_ids)
    logp, _ = token_logprobs(out.mtp_hidden, lm_head_weight(params, cfg), t, cfg.loss_chunk_size, mask=m)
    return -jnp.sum(logp * m), jnp.sum(m)
