"""Causal attention for XLA:CPU: query blocks that each see only the keys up to their own end.

The reference (`kernels.reference.attention`) computes the whole fp32 [T, S] score matrix in the [B, T, heads, S]
layout and masks it: on XLA:CPU half of that work is the causal upper triangle, and the layout puts a transpose of
the scores around both matmuls. Here the queries are cut into at most `MAX_BLOCKS` row blocks; block i multiplies
only the keys 0 .. end(i) (a static slice: the blocks are unrolled), so about (n + 1) / 2n of the scores are computed
(0.56 at 8 blocks), and every matmul runs in the [B, kv head, group, T, D] layout, where both are plain batched
matmuls. Within a block the mask (segment ids, causality) is applied as in the reference, so packed rows stay exact.

The softmax of a block is exp(s - m) / l with m the row max under `stop_gradient` (the result does not depend on m,
so its gradient is exactly zero; autodiff then skips the max's backward), and the division after the value matmul;
a fully masked row (l = 0) gives o = 0, as in the reference. Pure XLA, differentiated by autodiff.

Takes causal attention with the default positions (the index): block skipping relies on a query never seeing a later
key. Positions given explicitly (any token order) raise NotImplementedError, so `kernels.backend.dispatch` runs the
reference instead. Non-causal attention is one block.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.reference import attention as ref

F32 = jnp.float32
NAME = "xla_cpu"
MAX_BLOCKS = 8  # more blocks skip more of the triangle but unroll more ops (compile time)
MIN_BLOCK = 128  # shorter query blocks make matmuls too small to pay for their overhead


def num_blocks(T: int, causal: bool) -> int:
    return 1 if not causal else max(1, min(MAX_BLOCKS, T // MIN_BLOCK))


def flash_attention(q, k, v, *, segment_ids=None, positions=None, causal=True):
    """o [B, T, nh, D] in q's dtype from q [B, T, nh, D], k/v [B, T, nkv, D], segment ids [B, T]; the signature and
    result of `kernels.reference.attention.flash_attention` (masked rows give 0)."""
    if positions is not None:
        raise NotImplementedError("explicit positions: the query blocks skip keys by index")
    B, T, nh, D = q.shape
    S, nkv = k.shape[1], k.shape[2]
    if S != T:
        raise NotImplementedError(f"{S} keys for {T} queries: the blocks assume self-attention")
    seg, _ = ref.default_ids(q, segment_ids, None)
    qh = q.astype(F32).reshape(B, T, nkv, nh // nkv, D).transpose(0, 2, 3, 1, 4)  # [B, nkv, g, T, D]
    kh, vh = (a.astype(F32).transpose(0, 2, 1, 3) for a in (k, v))  # [B, nkv, S, D]
    n = num_blocks(T, causal)
    bounds = [T * i // n for i in range(n + 1)]
    idx = jnp.arange(T)
    outs = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        end = hi if causal else T
        s = jnp.einsum("bkgtd,bksd->bkgts", qh[:, :, :, lo:hi], kh[:, :, :end]) * (D ** -0.5)
        mask = seg[:, lo:hi, None] == seg[:, None, :end]
        if causal:
            mask = mask & (idx[lo:hi, None] >= idx[None, :end])
        mask = mask[:, None, None]  # [B, 1, 1, t, s]
        s = jnp.where(mask, s, ref.NEG)
        m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
        p = jnp.where(mask, jnp.exp(s - m), 0.0)
        l = jnp.sum(p, axis=-1, keepdims=True)
        o = jnp.einsum("bkgts,bksd->bkgtd", p, vh[:, :, :end])
        outs.append(o / jnp.where(l == 0.0, 1.0, l))
    o = jnp.concatenate(outs, axis=3)  # [B, nkv, g, T, D]
    return o.transpose(0, 3, 1, 2, 4).reshape(B, T, nh, D).astype(q.dtype)
