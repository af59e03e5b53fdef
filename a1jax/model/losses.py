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


@jax.custom_vjp
def _permute(x, order, inverse):
    """x [B, T, ...] with each row's positions in `order` [B, T] (a permutation; `inverse` undoes it). The backward
    pass is the gather by `inverse`, not the scatter-add autodiff of a gather emits (serial and slow on XLA:CPU)."""
    return jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)


def _permute_fwd(x, order, inverse):
    return _permute(x, order, inverse), (order, inverse)


def _permute_bwd(res, g):
    order, inverse = res
    return _permute(g, inverse, order), None, None


_permute.defvjp(_permute_fwd, _permute_bwd)


def token_logprobs(hidden, w_out, targets, chunk_size: int, mask=None):
    """log p(targets) and logsumexp of the logits, both [B,T] fp32. hidden [B,T,H]; w_out [H,V]; targets [B,T].

    Each row is cut into chunks of `chunk_size` positions; step j projects chunk j of every row at once, so a device
    holds [its rows, chunk, V] logits and the batch dimension keeps its sharding (nothing here mixes rows, so the
    SPMD partitioner splits the loss over the batch shards instead of replicating it).

    With `mask` [B,T], only masked-in positions are computed (the others return 0): within each row, positions are
    first gathered so that masked-in ones come first, and a step where no row has a masked-in position left skips
    its projection. In agentic SFT most tokens are tool output or user text, so this removes most of the vocabulary
    work. Exact: the loss is a sum over positions, and their order does not matter.
    """
    B, T, H = hidden.shape
    c = min(chunk_size, T)
    n = -(-T // c)
    pad = n * c - T
    if mask is not None:
        keep = mask != 0
        order = jnp.argsort(~keep, axis=1, stable=True)  # per row: masked-in positions first, in their order
        inverse = jnp.argsort(order, axis=1)
        hidden = _permute(hidden, order, inverse)
        targets, keep = jnp.take_along_axis(targets, order, axis=1), jnp.take_along_axis(keep, order, axis=1)
    else:
        keep = jnp.ones((B, T), bool)
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets, keep = jnp.pad(targets, ((0, 0), (0, pad))), jnp.pad(keep, ((0, 0), (0, pad)))
    w = w_out.astype(hidden.dtype)

    @jax.checkpoint
    def one_chunk(xs):
        h, t, k = xs  # [B,c,H], [B,c], [B,c]

        def compute(h, t):
            logits = jnp.einsum("bch,hv->bcv", h, w, preferred_element_type=F32)
            lse = jax.nn.logsumexp(logits, axis=-1)
            return jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0] - lse, lse

        skip = lambda h, t: (jnp.zeros(t.shape, F32), jnp.zeros(t.shape, F32))
        return jax.lax.cond(jnp.any(k), compute, skip, h, t)

    steps = lambda x: jnp.moveaxis(x.reshape(B, n, c, *x.shape[2:]), 1, 0)  # [n, B, c, ...]
    logp, lse = jax.lax.map(one_chunk, (steps(hidden), steps(targets), steps(keep)))
    unsteps = lambda x: jnp.moveaxis(x, 0, 1).reshape(B, n * c)[:, :T]
    logp, lse = unsteps(logp), unsteps(lse)
    if mask is not None:
        logp, lse = _permute(logp, inverse, order), _permute(lse, inverse, order)
    return logp, lse


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
