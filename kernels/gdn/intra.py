"""Intra-chunk preparation of the chunked gated delta rule: the WY/UT factors W, U (Pallas), and every other per-chunk
factor in pure jnp (the backward differentiates it with plain autodiff; it is parallel over chunks, so XLA batches it).

Per chunk of C tokens with chunk-local cumulative log-decay gamma and chunk-local segment index sidx (0 = the segment
that was open when the chunk began), as in kernels/reference/gated_delta_rule.py:
    A  = strict_tril(beta_i k_i.k_j e^{gamma_i - gamma_j}), same-segment pairs only
    X  = (I + A)^-1 by blockwise doubling;   U = X (beta V);   W = X (beta e^gamma K), rows with sidx = 0 only
    Qs = q e^gamma (sidx = 0 rows), P = tril(q.k e^{gamma_i - gamma_j}) (same segment), Kc = k e^{gamma_C - gamma}
    (rows of the segment open at the chunk end), cd = e^{gamma_C} (0 if a segment starts inside the chunk).
Every exponent is <= 0; the ones that could be positive (masked-out pairs) are zeroed before exp, so the backward
never sees inf * 0. No -inf gates are used.

Kernel layout: k [B, Hk, Tp, dk] (v-head h reads qk-head h // rep), v [B, H, Tp, dv], gamma/beta columns
[B, H, Tp, 1], gamma rows [B, H, n, 1, C], sidx column [B, Tp, 1] and rows [B, n, 1, C].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.attention import _pallas
from kernels.reference.gated_delta_rule import lower_inverse, mm, unit_lower_inverse

F32 = jnp.float32
HIGHEST = jax.lax.Precision.HIGHEST  # the WY inverse and the state chain lose accuracy fast at bf16 passes


def mm_nt(a, b):  # a [.., m, d] . b [.., n, d]^T
    return jnp.matmul(a, jnp.swapaxes(b, -1, -2), precision=HIGHEST, preferred_element_type=F32)


def _wy(k, v, gam_col, gam_row, beta_col, sidx_col, sidx_row, inverse=unit_lower_inverse):
    """One chunk (2-D operands, or batched with matching leading dims). Returns (W [C, dk], U [C, dv]). `inverse`:
    full-size matmuls in a kernel body; `lower_inverse` (blockwise, an analytic backward) where XLA differentiates."""
    C = k.shape[-2]
    row = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    strict = (row > col) & (sidx_col == sidx_row)
    decay = jnp.exp(jnp.where(strict, gam_col - gam_row, 0.0))
    a = jnp.where(strict, beta_col * mm_nt(k, k) * decay, 0.0)
    x = inverse(a)
    u = mm(x, beta_col * v)
    w = jnp.where(sidx_col == 0, mm(x, (beta_col * jnp.exp(gam_col)) * k), 0.0)
    return w, u


def _wy_kernel(k_ref, v_ref, gc_ref, gr_ref, b_ref, sc_ref, sr_ref, w_ref, u_ref):
    w, u = _wy(k_ref[...].astype(F32), v_ref[...].astype(F32), gc_ref[...], gr_ref[...], b_ref[...], sc_ref[...],
               sr_ref[...])
    w_ref[...] = w
    u_ref[...] = u


def inverse_flops(C: int) -> int:
    """Matmul FLOPs of `unit_lower_inverse` on one [C, C] block: log2(C) rounds of two [C, C] x [C, C] products."""
    return 2 * (C.bit_length() - 1) * 2 * C ** 3


def wy_cost(B, H, Tp, C, dk, dv, in_itemsize):
    """pl.CostEstimate of `wy_pallas` (nominal FLOPs: HIGHEST-precision fp32 passes are not multiplied out).
    Per (batch, head, chunk): K Kᵀ 2C²dk, the inverse, U = X(βV) 2C²dv, W = X(βe^γK) 2C²dk; exp of the C² decays and
    the C gates. Reads k and v once per value head, the [C] columns and rows; writes W, U in fp32."""
    steps = B * H * (Tp // C)
    per_step = 2 * C * C * (2 * dk + dv) + inverse_flops(C)
    reads = C * (dk + dv) * in_itemsize + 6 * C * 4
    return pl.CostEstimate(flops=int(steps * per_step), transcendentals=int(steps * (C * C + C)),
                           bytes_accessed=int(steps * (reads + C * (dk + dv) * 4)))


def wy_pallas(k, v, gam_col, gam_row, beta_col, sidx_col, sidx_row, *, chunk, variant, interpret):
    """W [B, H, Tp, dk], U [B, H, Tp, dv] (fp32), one grid step per (batch, head, chunk): fully parallel."""
    B, Hk, Tp, dk = k.shape
    H, dv = v.shape[1], v.shape[3]
    rep, C = H // Hk, chunk
    tok = lambda d, hmap=lambda h: h: pl.BlockSpec((None, None, C, d), lambda b, h, c: (b, hmap(h), c, 0))
    return _pallas.call(
        _wy_kernel, variant=variant, grid=(B, H, Tp // C), interpret=interpret, semantics=("parallel",) * 3,
        in_specs=[tok(dk, lambda h: h // rep), tok(dv), tok(1),
                  pl.BlockSpec((None, None, None, 1, C), lambda b, h, c: (b, h, c, 0, 0)), tok(1),
                  pl.BlockSpec((None, C, 1), lambda b, h, c: (b, c, 0)),
                  pl.BlockSpec((None, None, 1, C), lambda b, h, c: (b, c, 0, 0))],
        out_specs=[tok(dk), tok(dv)],
        out_shape=[_pallas.out_struct((B, H, Tp, dk), F32, v), _pallas.out_struct((B, H, Tp, dv), F32, v)],
        name="gdn_wy", cost=wy_cost(B, H, Tp, C, dk, dv, k.dtype.itemsize))(k, v, gam_col, gam_row, beta_col, sidx_col, sidx_row)


def intra_chunk(q, k, v, gamma, beta, sidx, rep: int):
    """All per-chunk factors in pure jnp, chunked layout: q, k [B, Hk, n, C, dk]; v [B, H, n, C, dv]; gamma, beta
    [B, H, n, C]; sidx [B, n, C]. Returns W, U, Qs [.., C, d], P [.., C, C], Kc [.., C, dk], cd [B, H, n]."""
    q, k = jnp.repeat(q, rep, axis=1), jnp.repeat(k, rep, axis=1)
    C = k.shape[-2]
    sid = sidx[:, None]  # [B, 1, n, C]
    gc, gr, sc, sr = gamma[..., :, None], gamma[..., None, :], sid[..., :, None], sid[..., None, :]
    w, u = _wy(k, v, gc, gr, beta[..., :, None], sc, sr, lower_inverse)
    row = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    incl = (row >= col) & (sc == sr)
    p = jnp.where(incl, mm_nt(q, k) * jnp.exp(jnp.where(incl, gc - gr, 0.0)), 0.0)
    qs = jnp.where(sc == 0, q * jnp.exp(gc), 0.0)
    g_last = gamma[..., -1:]
    kc = jnp.where(sc == sid[..., -1:, None], k * jnp.exp(g_last - gamma)[..., None], 0.0)
    cd = jnp.where(sid[..., -1] == 0, jnp.exp(gamma[..., -1]), 0.0)
    return w, u, qs, p, kc, cd

