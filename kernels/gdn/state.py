"""The two sequential-over-chunks kernels of the chunked gated delta rule: `fwd_h` and its reverse twin `bwd_dhu`.

Everything parallel over chunks happens elsewhere (intra.py, the output kernel); only the state walk is sequential.
The grid runs over (batch, head, value block); the d_k x block_v fp32 state stays on chip for the whole walk: in VMEM
scratch across the chunk grid axis on TPU, in registers across an in-kernel loop on GPU (see attention/_pallas.py).

Per chunk c with incoming state S (intra.py defines W, U, Kc, cd, Qs):
    fwd:  h_c = S;  v_new = U - W S;  S <- cd S + Kc^T v_new
    bwd:  dh_c = dS (gradient of the state *after* chunk c);  dv_new = dv_local + Kc dS;
          dS <- cd dS + Qs^T do - W^T dv_new            (dv_local = P^T do, computed in parallel beforehand)
Kc, cd and Qs are rebuilt in the kernels from k, q, gamma and the segment index instead of being read from memory.

Layouts: token arrays [B, H(k), Tp, d]; gamma and segment-index columns [B, H, Tp, 1] / [B, Tp, 1]; per-chunk states
[B, H, n * dk, dv] (chunk c at rows c*dk .. c*dk + dk - 1), so every ref is 2-D per (batch, head).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.attention import _pallas
from kernels.gdn.intra import HIGHEST, mm

F32 = jnp.float32


def _mm_tn(a, b):  # a [m, k]^T . b [m, n] -> [k, n]
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=HIGHEST, preferred_element_type=F32)


def _carry_factors(k, gam, sidx):
    """Kc [C, dk] and cd [1, 1]. gamma is non-increasing in a chunk (g <= 0) and sidx non-decreasing, so min/max give
    the values at the chunk's last token without slicing."""
    g_last = jnp.min(gam, axis=0, keepdims=True)
    s_last = jnp.max(sidx, axis=0, keepdims=True)
    kc = jnp.where(sidx == s_last, k * jnp.exp(g_last - gam), 0.0)
    cd = jnp.where(s_last == 0, jnp.exp(g_last), 0.0)
    return kc, cd


def _fwd_step(S, k, w, u, gam, sidx):
    kc, cd = _carry_factors(k, gam, sidx)
    v_new = u - mm(w, S)
    return cd * S + _mm_tn(kc, v_new), v_new


def _bwd_step(dS, q, k, w, do, dv_local, gam, sidx):
    kc, cd = _carry_factors(k, gam, sidx)
    qs = jnp.where(sidx == 0, q * jnp.exp(gam), 0.0)
    dv_new = dv_local + mm(kc, dS)
    return cd * dS + _mm_tn(qs, do) - _mm_tn(w, dv_new), dv_new


class _Chunk:
    """Chunk c of a ref: the current block on TPU (its index map already points at c), or rows [c*rows, (c+1)*rows)
    of a whole-sequence ref on GPU."""

    def __init__(self, variant, c):
        self.tpu, self.c = variant == "tpu", c

    def _rows(self, rows):
        return pl.ds(pl.multiple_of(self.c * rows, rows), rows)

    def get(self, ref, rows):
        x = ref[...] if self.tpu else ref[self._rows(rows), :]
        return x.astype(F32) if jnp.issubdtype(x.dtype, jnp.floating) else x

    def put(self, ref, rows, x):
        if self.tpu:
            ref[...] = x.astype(ref.dtype)
        else:
            ref[self._rows(rows), :] = x.astype(ref.dtype)


def _walk(variant, n, reverse, step, init_ref, final_ref, scratch):
    """carry = step(chunk, carry) over the n chunks (in reverse for the backward), from init_ref into final_ref."""
    if variant == "tpu":
        (carry_sc,) = scratch
        i = pl.program_id(3)

        @pl.when(i == 0)
        def _init():
            carry_sc[...] = init_ref[...].astype(F32)

        carry_sc[...] = step(_Chunk(variant, None), carry_sc[...])

        @pl.when(i == n - 1)
        def _finish():
            final_ref[...] = carry_sc[...]
    else:
        body = lambda i, s: step(_Chunk(variant, n - 1 - i if reverse else i), s)
        final_ref[...] = jax.lax.fori_loop(0, n, body, init_ref[...].astype(F32))


def _fwd_h_kernel(k_ref, w_ref, u_ref, gam_ref, sidx_ref, s0_ref, *rest, variant, n, C, dk, with_states):
    h_ref, vn_ref, sf_ref, *scratch = rest if with_states else (None, None, *rest)

    def step(at, S):
        if with_states:
            at.put(h_ref, dk, S)
        S, v_new = _fwd_step(S, at.get(k_ref, C), at.get(w_ref, C), at.get(u_ref, C), at.get(gam_ref, C),
                             at.get(sidx_ref, C))
        if with_states:
            at.put(vn_ref, C, v_new)
        return S

    _walk(variant, n, False, step, s0_ref, sf_ref, scratch)


def _bwd_dhu_kernel(q_ref, k_ref, w_ref, do_ref, dvl_ref, gam_ref, sidx_ref, dsf_ref, dh_ref, dvn_ref, ds0_ref,
                    *scratch, variant, n, C, dk):
    def step(at, dS):
        at.put(dh_ref, dk, dS)
        dS, dv_new = _bwd_step(dS, at.get(q_ref, C), at.get(k_ref, C), at.get(w_ref, C), at.get(do_ref, C),
                               at.get(dvl_ref, C), at.get(gam_ref, C), at.get(sidx_ref, C))
        at.put(dvn_ref, C, dv_new)
        return dS

    _walk(variant, n, True, step, dsf_ref, ds0_ref, scratch)


def _specs(variant, n, C, rep, reverse):
    """BlockSpec factories for (token arrays, per-chunk states, whole states) on either variant."""
    if variant == "tpu":
        cc = (lambda c: n - 1 - c) if reverse else (lambda c: c)
        tok = lambda d, by_v=False, qk=False: pl.BlockSpec(
            (None, None, C, d), lambda b, h, j, c: (b, h // rep if qk else h, cc(c), j if by_v else 0))
        ids = pl.BlockSpec((None, C, 1), lambda b, h, j, c: (b, cc(c), 0))
        per_chunk = lambda dk, bv: pl.BlockSpec((None, None, dk, bv), lambda b, h, j, c: (b, h, cc(c), j))
        whole = lambda dk, bv: pl.BlockSpec((None, None, dk, bv), lambda b, h, j, c: (b, h, 0, j))
    else:
        tok = lambda d, by_v=False, qk=False: pl.BlockSpec(
            (None, None, n * C, d), lambda b, h, j: (b, h // rep if qk else h, 0, j if by_v else 0))
        ids = pl.BlockSpec((None, n * C, 1), lambda b, h, j: (b, 0, 0))
        per_chunk = lambda dk, bv: pl.BlockSpec((None, None, n * dk, bv), lambda b, h, j: (b, h, 0, j))
        whole = lambda dk, bv: pl.BlockSpec((None, None, dk, bv), lambda b, h, j: (b, h, 0, j))
    return tok, ids, per_chunk, whole


def _grid(variant, B, H, nv, n):
    if variant == "tpu":
        return (B, H, nv, n), ("parallel", "parallel", "parallel", "arbitrary")
    return (B, H, nv), ("parallel",) * 3


def walk_cost(B, H, Tp, C, dk, dv, bv, *, matmuls, exps, reads, writes):
    """pl.CostEstimate of a state walk over (batch, head, value block, chunk) steps: `matmuls` [C, dk] x [dk, bv]-sized
    products and `exps` [C] exponentials per step (the carry factors are rebuilt for every value block); `reads` and
    `writes` are the bytes per (batch, head) of the whole walk."""
    steps = B * H * (dv // bv) * (Tp // C)
    return pl.CostEstimate(flops=int(steps * matmuls * 2 * C * dk * bv), transcendentals=int(steps * (exps * C + 1)),
                           bytes_accessed=int(B * H * (reads + writes)))


def fwd_h(k, w, u, gam_col, sidx_col, s0, *, chunk, block_v, variant, interpret, with_states=True):
    """Forward state walk. Returns (h [B,H,n*dk,dv], v_new [B,H,Tp,dv], final [B,H,dk,dv]) if with_states, else
    only the final state (the context-parallel pre-pass)."""
    B, Hk, Tp, dk = k.shape
    H, dv = u.shape[1], u.shape[3]
    n, C, bv = Tp // chunk, chunk, min(block_v, dv)
    tok, ids, per_chunk, whole = _specs(variant, n, C, H // Hk, reverse=False)
    grid, semantics = _grid(variant, B, H, dv // bv, n)
    outs = [(per_chunk(dk, bv), (B, H, n * dk, dv)), (tok(bv, by_v=True), (B, H, Tp, dv))] if with_states else []
    outs.append((whole(dk, bv), (B, H, dk, dv)))
    kernel = functools.partial(_fwd_h_kernel, variant=variant, n=n, C=C, dk=dk, with_states=with_states)
    # per step: v_new = U - W S and S' = cd S + Kcᵀ v_new; k is read once per value block, W, U, the state in fp32
    nv = dv // bv
    writes = 4 * (n * dk * dv + Tp * dv if with_states else 0) + 4 * dk * dv
    cost = walk_cost(B, H, Tp, C, dk, dv, bv, matmuls=2, exps=1, writes=writes,
                     reads=nv * Tp * (dk * k.dtype.itemsize + 4 * dk + 8) + 4 * Tp * dv + 4 * dk * dv)
    res = _pallas.call(
        kernel, variant=variant, grid=grid, semantics=semantics, interpret=interpret,
        in_specs=[tok(dk, qk=True), tok(dk), tok(bv, by_v=True), tok(1), ids, whole(dk, bv)],
        out_specs=[s for s, _ in outs], out_shape=[_pallas.out_struct(shape, F32, u) for _, shape in outs],
        scratch=[_pallas.vmem((dk, bv), F32)], name="gdn_fwd_h", cost=cost)(k, w, u, gam_col, sidx_col, s0)
    return tuple(res) if with_states else res[0]


def bwd_dhu(q, k, w, do, dv_local, gam_col, sidx_col, ds_final, *, chunk, block_v, variant, interpret):
    """Reverse state-gradient walk. Returns (dh [B,H,n*dk,dv], dv_new [B,H,Tp,dv], d initial state [B,H,dk,dv])."""
    B, Hk, Tp, dk = k.shape
    H, dv = do.shape[1], do.shape[3]
    n, C, bv = Tp // chunk, chunk, min(block_v, dv)
    tok, ids, per_chunk, whole = _specs(variant, n, C, H // Hk, reverse=True)
    grid, semantics = _grid(variant, B, H, dv // bv, n)
    kernel = functools.partial(_bwd_dhu_kernel, variant=variant, n=n, C=C, dk=dk)
    # per step: dv_new = dv_local + Kc dS and dS' = cd dS + Qsᵀ do - Wᵀ dv_new
    nv = dv // bv
    cost = walk_cost(B, H, Tp, C, dk, dv, bv, matmuls=3, exps=2, writes=4 * (n * dk * dv + Tp * dv + dk * dv),
                     reads=nv * Tp * (dk * (q.dtype.itemsize + k.dtype.itemsize) + 4 * dk + 8)
                     + 4 * (2 * Tp * dv + dk * dv))
    return tuple(_pallas.call(
        kernel, variant=variant, grid=grid, semantics=semantics, interpret=interpret,
        in_specs=[tok(dk, qk=True), tok(dk, qk=True), tok(dk), tok(bv, by_v=True), tok(bv, by_v=True), tok(1), ids,
                  whole(dk, bv)],
        out_specs=[per_chunk(dk, bv), tok(bv, by_v=True), whole(dk, bv)],
        out_shape=[_pallas.out_struct(s, F32, do) for s in ((B, H, n * dk, dv), (B, H, Tp, dv), (B, H, dk, dv))],
        scratch=[_pallas.vmem((dk, bv), F32)], name="gdn_bwd_dhu", cost=cost)(q, k, w, do, dv_local, gam_col, sidx_col,
                                                                   ds_final))
