"""Gated full attention (docs/spec/model.md §2.2): interleaved output gate, per-head q/k RMSNorm1p, partial RoPE, GQA.

Masking is by index (causal) and by segment id (block-diagonal for packed rows). With a decode cache, keys live in
cache slots 0..S-1 and a query at absolute slot `index + t` sees slots <= it whose segment id equals its own.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from a1jax.model.config import ModelConfig
from a1jax.model.layers import apply_partial_rope, rms_norm_1p, rope_cos_sin
from a1jax.model.parallel import Parallel
from kernels import attention as attention_kernels

F32 = jnp.float32


def dot_product_attention(q, k, v, mask):
    """Reference softmax attention. q [B,T,nh,D]; k, v [B,S,nkv,D]; mask [B,T,S] bool. fp32 scores and softmax."""
    B, T, nh, D = q.shape
    nkv = k.shape[2]
    qg = q.reshape(B, T, nkv, nh // nkv, D)  # q head j uses kv head j // (nh / nkv)
    s = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=F32) * (D ** -0.5)
    s = jnp.where(mask[:, None, None], s, jnp.finfo(F32).min)
    p = jax.nn.softmax(s, axis=-1).astype(q.dtype)
    o = jnp.einsum("bkgts,bskd->btkgd", p, v, preferred_element_type=F32).astype(q.dtype)
    return o.reshape(B, T, nh, D)


def _zigzag_perms(n: int):
    """Chunk moves from the contiguous layout (shard r holds chunks 2r, 2r+1 of 2n) to zigzag (shard s holds chunks s
    and 2n-1-s): each shard's first and its second chunk move by one permutation each."""
    dest = lambda c: c if c < n else 2 * n - 1 - c
    return [(r, dest(2 * r)) for r in range(n)], [(r, dest(2 * r + 1)) for r in range(n)]


def _to_zigzag(x, axis: str, n: int):
    """[B, T, ...] local tokens in the contiguous layout -> this shard's tokens in the zigzag layout."""
    first, second = jnp.split(x, 2, axis=1)
    p1, p2 = _zigzag_perms(n)
    got1, got2 = jax.lax.ppermute(first, axis, p1), jax.lax.ppermute(second, axis, p2)
    even = jax.lax.axis_index(axis) % 2 == 0  # chunk s came by p1 when s is even (then 2n-1-s came by p2)
    return jnp.concatenate([jnp.where(even, got1, got2), jnp.where(even, got2, got1)], axis=1)


def _from_zigzag(x, axis: str, n: int):
    """The inverse of `_to_zigzag`."""
    lo, hi = jnp.split(x, 2, axis=1)
    even = jax.lax.axis_index(axis) % 2 == 0
    got1, got2 = jnp.where(even, lo, hi), jnp.where(even, hi, lo)
    inv = lambda perm: [(d, r) for r, d in perm]
    p1, p2 = _zigzag_perms(n)
    return jnp.concatenate([jax.lax.ppermute(got1, axis, inv(p1)), jax.lax.ppermute(got2, axis, inv(p2))], axis=1)


def local_attention(q, k, v, segment_ids, impl: str):
    """Causal, segment-masked attention of a whole sequence on one device: the flash kernel, or the reference."""
    if impl != "reference":
        return attention_kernels.flash_attention(q, k, v, segment_ids=segment_ids, impl=impl)
    T = q.shape[1]
    slot = jnp.arange(T)
    mask = (slot[None, None, :] <= slot[None, :, None]) & (segment_ids[:, None, :] == segment_ids[:, :, None])
    return dot_product_attention(q, k, v, mask)


def sharded_attention(q, k, v, segment_ids, cfg: ModelConfig, par: Parallel):
    """Attention inside one shard_map over the mesh, so a Pallas kernel (a custom call, which the SPMD partitioner
    cannot split) runs on each device's own rows and heads. Without a sequence axis each device runs
    `local_attention`. With one, the sequence is split contiguously and kernels.attention.ring_attention runs over
    it; with `cfg.ring_load_balance == "zigzag"` the tokens move to the zigzag order first (shard s holds chunks s
    and 2n-1-s of 2n, so every shard has the same causal work) and the output moves back; the mask uses global token
    indices either way. Heads stay split over the tensor axis when it divides both head counts."""
    heads = par.heads_axis(q.shape[2], k.shape[2])
    act, ids = par.tokens(heads, None), par.tokens()
    impl = {"reference": "xla", "auto": None}.get(cfg.attention_impl, cfg.attention_impl)
    axis, n = par.sequence_axis, par.size(par.sequence_axis)
    zigzag = cfg.ring_load_balance == "zigzag" and n > 1

    def body(q, k, v, seg):
        B, T = seg.shape
        if axis is None:
            return local_attention(q, k, v, seg, cfg.attention_impl)
        r = jax.lax.axis_index(axis)
        if not zigzag:
            return attention_kernels.ring_attention(q, k, v, axis_name=axis, segment_ids=seg, impl=impl)
        if T % 2:
            raise ValueError(f"ring_load_balance='zigzag' needs an even number of tokens per sequence shard, got {T}")
        C = T // 2
        pos = jnp.concatenate([r * C + jnp.arange(C), (2 * n - 1 - r) * C + jnp.arange(C)]).astype(jnp.int32)
        z = lambda x: _to_zigzag(x, axis, n)
        o = attention_kernels.ring_attention(z(q), z(k), z(v), axis_name=axis, segment_ids=z(seg),
                                             positions=jnp.broadcast_to(pos, (B, T)), impl=impl)
        return _from_zigzag(o, axis, n)

    return jax.shard_map(body, mesh=par.mesh, in_specs=(act, act, act, ids), out_specs=act,
                         check_vma=False)(q, k, v, segment_ids)


def gated_attention(p, x, cfg: ModelConfig, positions, segment_ids, cache=None, cache_ctx=None,
                    parallel: Parallel | None = None):
    """x [B,T,H] (normed) -> (out [B,T,H], new_cache). `cache` = {"k","v": [B,S,nkv,D]}; `cache_ctx` gives the
    write index and the [B,S] segment ids of all cache slots (already including this call's tokens). With a
    mesh in `parallel` (training, no cache) it runs per device (`sharded_attention`), as a ring over a sequence axis."""
    dtype = x.dtype
    B, T, _ = x.shape
    D = cfg.head_dim
    qg = jnp.einsum("bth,hnd->btnd", x, p["q_proj"].astype(dtype))  # [B,T,nh,2D]: per head query then gate
    q, gate = qg[..., :D], qg[..., D:]
    k = jnp.einsum("bth,hnd->btnd", x, p["k_proj"].astype(dtype))
    v = jnp.einsum("bth,hnd->btnd", x, p["v_proj"].astype(dtype))
    q = rms_norm_1p(q, p["q_norm"], cfg.rms_norm_eps)
    k = rms_norm_1p(k, p["k_norm"], cfg.rms_norm_eps)
    cos, sin = rope_cos_sin(positions, cfg.rotary_dim, cfg.rope_theta, dtype)
    q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)

    q_slot = jnp.arange(T)
    if cache is None:
        new_cache, kv_slot, kv_seg = None, q_slot, segment_ids
    else:
        index = cache_ctx["index"]
        k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), (0, index, 0, 0))
        v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), (0, index, 0, 0))
        new_cache = {"k": k, "v": v}
        k, v = k.astype(dtype), v.astype(dtype)
        q_slot = q_slot + index
        kv_slot, kv_seg = jnp.arange(k.shape[1]), cache_ctx["segment_ids"]
    if cache is None and parallel is not None:
        o = sharded_attention(q, k, v, segment_ids, cfg, parallel)
    elif cache is None:  # same mask: causal by index, same segment
        o = local_attention(q, k, v, segment_ids, cfg.attention_impl)
    else:
        mask = (kv_slot[None, None, :] <= q_slot[None, :, None]) & (kv_seg[:, None, :] == segment_ids[:, :, None])
        o = dot_product_attention(q, k, v, mask)
    o = o * jax.nn.sigmoid(gate)
    return jnp.einsum("btnd,ndh->bth", o, p["o_proj"].astype(dtype)), new_cache
