"""Pure-jnp attention references with the signatures of `kernels.attention` (docs/spec/kernels.md §4, §6.2).

Naive masked GQA softmax in fp32: q head j uses kv head j // (nh / nkv), and query t sees key s when both carry the same
segment id and (if causal) position[t] >= position[s]. Masked scores take the finite value NEG rather than -inf, so a
fully masked row gives lse = NEG and o = 0 instead of NaN; that is the convention the Pallas kernels and the ring
merge follow. Differentiable by plain autodiff; no Pallas.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32
NEG = -1e30  # finite mask value: exp(NEG - m) underflows to 0 and NEG - NEG never makes NaN


def attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, causal: bool):
    """mask [B, T, S] bool from [B, T] / [B, S] segment ids and positions."""
    mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if causal:
        mask = mask & (q_positions[:, :, None] >= kv_positions[:, None, :])
    return mask


def default_ids(x, segment_ids, positions):
    """Segment ids 0 everywhere and positions 0..T-1 when not given; both int32 [B, T]."""
    B, T = x.shape[:2]
    if segment_ids is None:
        segment_ids = jnp.zeros((B, T), jnp.int32)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    return segment_ids.astype(jnp.int32), positions.astype(jnp.int32)


def attention_with_lse(q, k, v, mask):
    """(o [B,T,nh,D] fp32, lse [B,T,nh] fp32). q [B,T,nh,D]; k, v [B,S,nkv,D]; mask [B,T,S]."""
    B, T, nh, D = q.shape
    nkv = k.shape[2]
    qg = q.astype(F32).reshape(B, T, nkv, nh // nkv, D)
    s = jnp.einsum("btkgd,bskd->btkgs", qg, k.astype(F32)) * (D ** -0.5)
    m = mask[:, :, None, None, :]
    s = jnp.where(m, s, NEG)
    lse = jax.nn.logsumexp(s, axis=-1)  # a fully masked row gives NEG + log(S): still "masked" below
    p = jnp.where(m, jnp.exp(s - lse[..., None]), 0.0)
    o = jnp.einsum("btkgs,bskd->btkgd", p, v.astype(F32))
    any_key = jnp.any(mask, axis=-1)[:, :, None, None]
    lse = jnp.where(any_key, lse, NEG)
    return o.reshape(B, T, nh, D), lse.reshape(B, T, nh)


def flash_attention(q, k, v, *, segment_ids=None, positions=None, causal=True, impl=None):
    """Reference for `kernels.attention.flash_attention`: o [B,T,nh,D] in q's dtype. `impl` is ignored."""
    del impl
    seg, pos = default_ids(q, segment_ids, positions)
    o, _ = attention_with_lse(q, k, v, attention_mask(seg, seg, pos, pos, causal))
    return o.astype(q.dtype)


def ring_attention(q, k, v, *, axis_name, segment_ids=None, positions=None, causal=True, impl=None):
    """Reference for `kernels.attention.ring_attention`, inside shard_map: all-gather keys, values, their positions
    and segment ids over `axis_name`, then naive attention of the local queries. Positions default to the contiguous
    layout (shard r holds tokens r*T .. r*T+T-1)."""
    del impl
    T = q.shape[1]
    seg, pos = default_ids(q, segment_ids, positions)
    if positions is None:
        pos = pos + jax.lax.axis_index(axis_name) * T
    gather = lambda x: jax.lax.all_gather(x, axis_name, axis=1, tiled=True)
    kseg, kpos, kg, vg = gather(seg), gather(pos), gather(k), gather(v)
    o, _ = attention_with_lse(q, kg, vg, attention_mask(seg, kseg, pos, kpos, causal))
    return o.astype(q.dtype)
