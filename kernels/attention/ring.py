"""Ring attention over the `sequence` mesh axis, called inside `shard_map` (docs/spec/kernels.md §6.3).

One `custom_vjp` wraps the whole ring. Forward: n hops; at each hop the local queries attend to the kv block in hand
with the flash block kernel (`flash.flash_fwd`), the partial (o_i, lse_i) merge in log-sum-exp form in fp32, and
(k, v, kv positions, kv segment ids) move one shard along the ring. Backward: delta = sum(o * do) and the global lse
from the forward; each hop runs the block backward (`flash.flash_bwd`) against the kv block in hand and sends the
partial dk, dv along with it, so after the last hop they have travelled all the way round and land on their owner.

Masks come from *global* positions, so any token order works; `load_balance` gives the zig-zag and striped orders
that even out causal work. With n = 1 the ring is exactly `flash_attention`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels import backend
from kernels.attention import flash
from kernels.reference import attention as ref

F32 = jnp.float32


def _rotate(xs, axis_name, n):
    """Send every array to the next shard (r -> r + 1 mod n)."""
    perm = [(i, (i + 1) % n) for i in range(n)]
    return tuple(jax.lax.ppermute(x, axis_name, perm) for x in xs)


def _merge(o, lse, o_i, lse_i):
    """Log-sum-exp merge of two normalised partial results. NEG is finite, so two empty rows give o = 0, no NaN."""
    lse_new = jnp.logaddexp(lse, lse_i)
    return o * jnp.exp(lse - lse_new) + o_i * jnp.exp(lse_i - lse_new), lse_new


def _hop_share(cfg) -> float:
    """The mean share of block pairs a hop after the first runs (its cost estimate). Causal: another shard's keys are
    all earlier or all later than a contiguous shard's queries, and half of a zig-zag shard's (q chunk, kv chunk)
    pairs are earlier, so on average a hop runs half its blocks and the kernels skip the rest."""
    return 0.5 if cfg.causal else 1.0


def _ring_forward(q, k, v, qseg, kseg, qpos, kpos, axis_name, cfg):
    n = jax.lax.axis_size(axis_name)
    o, lse = flash.flash_fwd(q, k, v, qseg, kseg, qpos, kpos, cfg, out_dtype=F32)

    def hop(_, carry):
        o, lse, k, v, kseg, kpos = carry
        k, v, kseg, kpos = _rotate((k, v, kseg, kpos), axis_name, n)
        o_i, lse_i = flash.flash_fwd(q, k, v, qseg, kseg, qpos, kpos, cfg, out_dtype=F32, visible=_hop_share(cfg))
        return (*_merge(o, lse, o_i, lse_i), k, v, kseg, kpos)

    if n > 1:
        o, lse, *_ = jax.lax.fori_loop(1, n, hop, (o, lse, k, v, kseg, kpos))
    return o.astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _ring(q, k, v, qseg, kseg, qpos, kpos, axis_name, cfg):
    return _ring_forward(q, k, v, qseg, kseg, qpos, kpos, axis_name, cfg)[0]


def _ring_vjp_fwd(q, k, v, qseg, kseg, qpos, kpos, axis_name, cfg):
    o, lse = flash.saveable(*_ring_forward(q, k, v, qseg, kseg, qpos, kpos, axis_name, cfg))
    return o, (q, k, v, qseg, kseg, qpos, kpos, o, lse)


def _ring_vjp_bwd(axis_name, cfg, res, do):
    q, k, v, qseg, kseg, qpos, kpos, o, lse = res
    n = jax.lax.axis_size(axis_name)
    delta = jnp.sum(o.astype(F32) * do.astype(F32), axis=-1, keepdims=True)
    do = do.astype(q.dtype)
    dq, dk, dv = flash.flash_bwd(q, k, v, qseg, kseg, qpos, kpos, do, lse, delta, cfg)

    def hop(_, carry):
        dq, dk, dv, k, v, kseg, kpos = carry
        k, v, kseg, kpos, dk, dv = _rotate((k, v, kseg, kpos, dk, dv), axis_name, n)
        dq_i, dk_i, dv_i = flash.flash_bwd(q, k, v, qseg, kseg, qpos, kpos, do, lse, delta, cfg,
                                           visible=_hop_share(cfg))
        return dq + dq_i, dk + dk_i, dv + dv_i, k, v, kseg, kpos

    if n > 1:
        dq, dk, dv, *_ = jax.lax.fori_loop(1, n, hop, (dq, dk, dv, k, v, kseg, kpos))
        dk, dv = _rotate((dk, dv), axis_name, n)  # the last hop held shard r+1's block: one more step home
    ints = tuple(flash.float0_like(x) for x in (qseg, kseg, qpos, kpos))
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)) + ints


_ring.defvjp(_ring_vjp_fwd, _ring_vjp_bwd)


# ---- the same ring in pure jnp (the "xla" impl): blocks in [B, T, heads, D] layout, no padding -----------------------
def _jnp_block_fwd(q, k, v, qseg, kseg, qpos, kpos, causal):
    return ref.attention_with_lse(q, k, v, ref.attention_mask(qseg, kseg, qpos, kpos, causal))  # o f32, lse f32


def _jnp_block_bwd(q, k, v, qseg, kseg, qpos, kpos, do, lse, delta, causal):
    """(dq, dk, dv) in fp32 of one kv block, from the *global* lse and delta = sum(o * do) [B, T, nh]."""
    B, T, nh, D = q.shape
    nkv = k.shape[2]
    G = nh // nkv
    mask = ref.attention_mask(qseg, kseg, qpos, kpos, causal)[:, :, None, None, :]
    qg = q.astype(F32).reshape(B, T, nkv, G, D)
    dog = do.astype(F32).reshape(B, T, nkv, G, D)
    kf, vf = k.astype(F32), v.astype(F32)
    scale = D ** -0.5
    s = jnp.einsum("btkgd,bskd->btkgs", qg, kf) * scale
    p = jnp.where(mask, jnp.exp(s - lse.reshape(B, T, nkv, G)[..., None]), 0.0)
    dv = jnp.einsum("btkgs,btkgd->bskd", p, dog)
    ds = p * (jnp.einsum("btkgd,bskd->btkgs", dog, vf) - delta.reshape(B, T, nkv, G)[..., None])
    dq = jnp.einsum("btkgs,bskd->btkgd", ds, kf).reshape(B, T, nh, D) * scale
    dk = jnp.einsum("btkgs,btkgd->bskd", ds, qg) * scale
    return dq, dk, dv


def _ring_jnp_forward(q, k, v, seg, pos, axis_name, causal):
    n = jax.lax.axis_size(axis_name)
    o, lse = _jnp_block_fwd(q, k, v, seg, seg, pos, pos, causal)

    def hop(_, carry):
        o, lse, k, v, kseg, kpos = carry
        k, v, kseg, kpos = _rotate((k, v, kseg, kpos), axis_name, n)
        o_i, lse_i = _jnp_block_fwd(q, k, v, seg, kseg, pos, kpos, causal)
        o, lse = _merge(o, lse[..., None], o_i, lse_i[..., None])  # lse [B, T, nh] -> [..., 1] against o
        return o, lse[..., 0], k, v, kseg, kpos

    if n > 1:
        o, lse, *_ = jax.lax.fori_loop(1, n, hop, (o, lse, k, v, seg, pos))
    return o, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _ring_jnp(q, k, v, seg, pos, axis_name, causal):
    return _ring_jnp_forward(q, k, v, seg, pos, axis_name, causal)[0].astype(q.dtype)


def _ring_jnp_vjp_fwd(q, k, v, seg, pos, axis_name, causal):
    o, lse = _ring_jnp_forward(q, k, v, seg, pos, axis_name, causal)
    o, lse = flash.saveable(o.astype(q.dtype), lse)
    return o, (q, k, v, seg, pos, o, lse)


def _ring_jnp_vjp_bwd(axis_name, causal, res, do):
    q, k, v, seg, pos, o, lse = res
    n = jax.lax.axis_size(axis_name)
    delta = jnp.sum(o.astype(F32) * do.astype(F32), axis=-1)
    dq, dk, dv = _jnp_block_bwd(q, k, v, seg, seg, pos, pos, do, lse, delta, causal)

    def hop(_, carry):
        dq, dk, dv, k, v, kseg, kpos = carry
        k, v, kseg, kpos, dk, dv = _rotate((k, v, kseg, kpos, dk, dv), axis_name, n)
        dq_i, dk_i, dv_i = _jnp_block_bwd(q, k, v, seg, kseg, pos, kpos, do, lse, delta, causal)
        return dq + dq_i, dk + dk_i, dv + dv_i, k, v, kseg, kpos

    if n > 1:
        dq, dk, dv, *_ = jax.lax.fori_loop(1, n, hop, (dq, dk, dv, k, v, seg, pos))
        dk, dv = _rotate((dk, dv), axis_name, n)
    ints = tuple(flash.float0_like(x) for x in (seg, pos))
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)) + ints


_ring_jnp.defvjp(_ring_jnp_vjp_fwd, _ring_jnp_vjp_bwd)


def _global_ids(q, segment_ids, positions, axis_name):
    seg, pos = ref.default_ids(q, segment_ids, positions)
    if positions is None:  # the contiguous layout: shard r holds tokens r*T .. r*T+T-1
        pos = pos + jax.lax.axis_index(axis_name) * q.shape[1]
    return seg, pos


def ring_attention(q, k, v, *, axis_name, segment_ids=None, positions=None, causal=True, impl=None, block_q=None,
                   block_k=None, interpret=None):
    """Attention of the local queries to the whole sequence sharded over `axis_name`; call inside shard_map.

    q [B,T,nh,D], k/v [B,T,nkv,D], ids [B,T] are this shard's tokens. `positions` are *global* (the causal mask
    compares them); they default to the contiguous layout, shard r holding tokens r*T .. r*T+T-1. Pass the permuted
    positions when the sequence was reordered with `load_balance`. Interpreted kernels need check_vma=False on the
    enclosing shard_map (docs/spec/kernels.md §2, gotcha 3). impl as for `flash_attention`; "xla" is the same ring in
    pure jnp (each hop materialises one [T, T] score block per head)."""
    T = q.shape[1]

    def pallas(name):
        seg, pos = _global_ids(q, segment_ids, positions, axis_name)
        cfg = flash.make_config(name, causal, block_q, block_k, interpret)
        return flash.from_kernel_layout(_ring(*flash.to_kernel_layout(q, k, v, seg, pos, cfg), axis_name, cfg), T)

    table = {"pallas_tpu": lambda: pallas("pallas_tpu"), "pallas_gpu": lambda: pallas("pallas_gpu"),
             "xla": lambda: _ring_jnp(q, k, v, *_global_ids(q, segment_ids, positions, axis_name), axis_name, causal)}
    return backend.dispatch("attention", table, impl)
