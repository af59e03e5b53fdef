"""Token log-probabilities and losses from hidden states, in sequence chunks.

The vocabulary is 248,320: [T, V] fp32 logits for a 262K-token row would be 260 GB. `map_logit_chunks` projects one
chunk of positions at a time under `jax.checkpoint`, so neither the forward nor the backward pass ever holds more
than [chunk, V] logits. It is the codebase's one chunked LM-head projection: the loss and log-probs here, the
distillation losses, teacher scoring and the report's KL all call it.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from a1jax.model.config import ModelConfig
from a1jax.model.transformer import Output, lm_head_weight

F32 = jnp.float32
KEEP_LOGITS_BYTES = 256 << 20  # fp32 logits of a whole batch kept for the backward below this size (map_logit_chunks)


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


def _shard_rows(a, shards: int):
    """[B, T, ...] -> [B*shards, T/shards, ...]: each sequence shard becomes a row of its own (a free reshape that keeps
    the batch and sequence shardings, the shard index minor to the row index)."""
    return a.reshape(a.shape[0] * shards, a.shape[1] // shards, *a.shape[2:])


def _unshard_rows(a, shards: int):
    return a.reshape(a.shape[0] // shards, a.shape[1] * shards, *a.shape[2:])


def _by_sequence_shard(f: Callable, shards: int, T: int, *arrays):
    """f(*arrays) with every [B, T, ...] array (None passes through) split into one row per sequence shard.

    The chunk loop is a scan over chunk index, which the SPMD partitioner cannot split: over a whole row, every device
    of a sequence-sharded mesh would project all T positions. Row-splitting first makes each step project one chunk
    of every shard at once, so a device projects only its own T / shards positions."""
    if shards <= 1 or T % shards:
        return f(*arrays)
    split = lambda t: jax.tree.map(lambda a: _shard_rows(a, shards), t)
    return jax.tree.map(lambda a: _unshard_rows(a, shards), f(*(split(a) for a in arrays)))


def keeps_logits(rows: int, T: int, chunk: int, vocab: int) -> bool:
    """Whether `map_logit_chunks` (remat=None) keeps the chunks' logits for the backward instead of recomputing them:
    when all of them, [rows, T rounded up to chunks, V] in fp32, take at most `KEEP_LOGITS_BYTES`."""
    c = max(1, min(int(chunk), T))
    return rows * -(-T // c) * c * vocab * 4 <= KEEP_LOGITS_BYTES


def map_logit_chunks(fn: Callable, hidden, unembed, xs, *, chunk: int, mask=None, remat: bool | None = None,
                     sequence_shards: int = 1):
    """Applies `fn(logits [B,c,V] fp32, xs_chunk) -> pytree of [B,c,...]` to T-chunks of `hidden @ unembed`.

    hidden [B,T,D]; unembed [D,V]; xs a pytree of [B,T,...] per-position inputs. With `mask` [B,T], a chunk without
    any masked-in position skips its projection and returns zeros. `remat` wraps each chunk in `jax.checkpoint`, so
    the backward pass recomputes the chunk's logits instead of storing them; None (the default) does so only when all
    the logits would take more than `KEEP_LOGITS_BYTES`: below that, keeping them saves the backward one [T, D] x
    [D, V] matmul (about 8% of a CPU train step at T = 2,048, V = 32,000; docs/performance.md). `sequence_shards`:
    the size of the mesh axis that splits T (see `_by_sequence_shard`); `fn` must treat positions independently.
    """
    if sequence_shards > 1:
        run = lambda h, x, m: map_logit_chunks(fn, h, unembed, x, chunk=chunk, mask=m, remat=remat)
        return _by_sequence_shard(run, sequence_shards, hidden.shape[1], hidden, xs, mask)
    B, T, _ = hidden.shape
    c = max(1, min(int(chunk), T))
    n = -(-T // c)
    pad = n * c - T

    def to_chunks(a):  # [B,T,...] -> [n,B,c,...]
        if pad:
            a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return jnp.moveaxis(a.reshape(B, n, c, *a.shape[2:]), 1, 0)

    w = unembed.astype(hidden.dtype)
    keep = jnp.ones((B, T), bool) if mask is None else mask != 0

    def compute(h, x):
        return fn(jnp.einsum("bcd,dv->bcv", h, w, preferred_element_type=F32), x)

    def one(args):
        h, x, k = args
        if mask is None:
            return compute(h, x)
        shapes = jax.eval_shape(compute, h, x)
        skip = lambda h, x: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return jax.lax.cond(jnp.any(k), compute, skip, h, x)

    chunks = (to_chunks(hidden), jax.tree.map(to_chunks, xs), to_chunks(keep))
    if remat is None:
        remat = not keeps_logits(B, T, chunk, unembed.shape[-1])
    if remat:
        out = jax.lax.map(jax.checkpoint(one), chunks)
    else:  # unrolled: a scan would stack each chunk's saved logits into one buffer, a copy per chunk
        outs = [one(jax.tree.map(lambda a: a[i], chunks)) for i in range(n)]
        out = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1).reshape(B, n * c, *a.shape[3:])[:, :T], out)


def token_logprobs(hidden, w_out, targets, chunk_size: int, mask=None, sequence_shards: int = 1):
    """log p(targets) and logsumexp of the logits, both [B,T] fp32. hidden [B,T,H]; w_out [H,V]; targets [B,T].

    `map_logit_chunks` does the projection: step j projects chunk j of every row at once, so a device holds
    [its rows, chunk, V] logits and the batch dimension keeps its sharding (nothing here mixes rows, so the SPMD
    partitioner splits the loss over the batch shards instead of replicating it).

    With `mask` [B,T], only masked-in positions are computed (the others return 0): within each row, positions are
    first gathered so that masked-in ones come first, and a step where no row has a masked-in position left skips
    its projection. In agentic SFT most tokens are tool output or user text, so this removes most of the vocabulary
    work. Exact: the loss is a sum over positions, and their order does not matter.
    `sequence_shards`: the size of the mesh axis that splits T; positions are then sorted and projected within each
    shard (`_by_sequence_shard`).
    """
    if sequence_shards > 1:
        run = lambda h, t, m: token_logprobs(h, w_out, t, chunk_size, mask=m)
        return _by_sequence_shard(run, sequence_shards, hidden.shape[1], hidden, targets, mask)
    if mask is not None:
        keep = mask != 0
        order = jnp.argsort(~keep, axis=1, stable=True)  # per row: masked-in positions first, in their order
        inverse = jnp.argsort(order, axis=1)
        hidden = _permute(hidden, order, inverse)
        targets, keep = jnp.take_along_axis(targets, order, axis=1), jnp.take_along_axis(keep, order, axis=1)

    def logp_and_lse(logits, t):
        lse = jax.nn.logsumexp(logits, axis=-1)
        return jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0] - lse, lse

    logp, lse = map_logit_chunks(logp_and_lse, hidden, w_out, targets, chunk=chunk_size,
                                 mask=None if mask is None else keep)
    if mask is not None:
        logp, lse = _permute(logp, inverse, order), _permute(lse, inverse, order)
    return logp, lse


def mtp_targets(targets, loss_mask, segment_ids):
    """The MTP head at position t predicts token t+2 = targets[t+1], valid if t+1 lies in t's segment."""
    shift = lambda a: jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], axis=1)
    same = (shift(segment_ids) == segment_ids) & (segment_ids != 0)
    return shift(targets), shift(loss_mask).astype(F32) * same.astype(F32)


def mtp_nll(params, out: Output, targets, loss_mask, segment_ids, cfg: ModelConfig, sequence_shards: int = 1):
    """(sum, count) of the MTP cross-entropy; `out` must come from forward(..., mtp=True)."""
    t, m = mtp_targets(targets, loss_mask, segment_ids)
    logp, _ = token_logprobs(out.mtp_hidden, lm_head_weight(params, cfg), t, cfg.loss_chunk_size, mask=m,
                             sequence_shards=sequence_shards)
    return -jnp.sum(logp * m), jnp.sum(m)
