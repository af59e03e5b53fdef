"""Grouped matmul for GPU (Pallas Triton lowering): the activations and the whole weight array stay in global memory
(`memory_space=pl.ANY`) and each program indexes its expert's weights in-kernel, `w_ref[e, ...]` with
e = tile_expert[i] (Triton has no scalar prefetch; docs/spec/kernels.md §1.1, §3.2).

Rows arrive in the tile-aligned layout of `kernels.moe.routing`, so every program's row tile belongs to one expert
and all programs are independent: the whole grid is parallel. The contraction runs as an in-kernel loop over
K blocks, which Triton software-pipelines (`num_stages`). The weight gradient gives each program one expert's
(bk, bn) block and loops over that expert's row tiles; an expert with no rows loops zero times and writes zeros.
The custom_vjp and the XLA path are in `kernels.moe.grouped`; the pure-jnp reference is `kernels.reference.moe`.

Triton needs power-of-two blocks of at least 16 (`tl.dot`); other shapes raise NotImplementedError. Block sizes are
first guesses for H100 (bm <= 64, 64-wide K steps), not tuned on hardware.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from kernels import backend
from kernels.moe import _common
from kernels.moe._common import F32

NAME = "pallas_gpu"
MIN = 16  # smallest tl.dot dimension
BK, BN, BN_SWIGLU = 64, 128, 64  # two fp32 accumulators in registers for the fused gate|up kernel


def row_tile(rows_per_expert: float, dtype) -> int:
    """About a quarter of the mean load (expected padding <= 1/8 of the rows), a power of two in [16, 64]."""
    del dtype
    t = MIN
    while t * 2 <= min(64, rows_per_expert / 4):
        t *= 2
    return t


def _blocks(op: str, k: int, n: int, tile: int):
    if tile < MIN or tile & (tile - 1):
        raise NotImplementedError(f"{NAME}: row tile {tile} must be a power of two >= {MIN}")
    bk = _common.block(NAME, "contraction dim" if op != "tgmm" else "weight rows", k, BK, MIN, full_ok=False,
                       pow2=True)
    bn = _common.block(NAME, "output dim", n, BN_SWIGLU if op == "swiglu" else BN, MIN, full_ok=False, pow2=True)
    return bk, bn


def validate(k: int, n: int, dtype, tile: int, *, fused: bool = False) -> None:
    """Raises NotImplementedError unless the forward and backward kernels of a [*, k] x [E, k, n] grouped matmul all
    have legal blocks (`fused`: n = 2I is the gate|up pair of `gmm_swiglu`)."""
    del dtype
    _blocks("swiglu" if fused else "gmm", k, n // 2 if fused else n, tile)
    _blocks("gmm_t", n, k, tile)
    _blocks("tgmm", k, n, tile)


_ANY = pl.BlockSpec(memory_space=pl.ANY)


def _params():
    return pl_triton.CompilerParams(num_warps=4, num_stages=3)


def _gmm_kernel(te_ref, na_ref, x_ref, w_ref, o_ref, *, bk, nk, transpose_rhs):
    i, j = pl.program_id(0), pl.program_id(1)
    bm, bn = o_ref.shape
    active = i < na_ref[0]

    @pl.when(active)
    def _():
        e = te_ref[i]
        rows, cols = pl.ds(pl.multiple_of(i * bm, bm), bm), pl.ds(pl.multiple_of(j * bn, bn), bn)

        def body(k, acc):
            ks = pl.ds(pl.multiple_of(k * bk, bk), bk)
            if transpose_rhs:
                return acc + _common.dot(x_ref[rows, ks], w_ref[e, cols, ks], 1, 1)
            return acc + _common.dot(x_ref[rows, ks], w_ref[e, ks, cols], 1, 0)

        o_ref[...] = jax.lax.fori_loop(0, nk, body, jnp.zeros((bm, bn), F32)).astype(o_ref.dtype)

    @pl.when(jnp.logical_not(active))
    def _():
        o_ref[...] = jnp.zeros(o_ref.shape, o_ref.dtype)


def gmm(x, w, layout, *, transpose_rhs: bool = False):
    """y[tile i] = x[tile i] @ w[tile_expert[i]] (or @ w[...].T): x [M, K], w [E, K, N] ([E, N, K]) -> [M, N]."""
    _common.check_dtype(NAME, x.dtype, w.dtype)
    M, K = x.shape
    N = w.shape[1] if transpose_rhs else w.shape[2]
    bm = layout.tile
    bk, bn = _blocks("gmm_t" if transpose_rhs else "gmm", K, N, bm)
    return pl.pallas_call(
        functools.partial(_gmm_kernel, bk=bk, nk=K // bk, transpose_rhs=transpose_rhs),
        grid=(M // bm, N // bn), in_specs=[_ANY] * 4, out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((M, N), x.dtype), compiler_params=_params(),
        interpret=backend.interpret_mode("gpu"), name="moe_gmm_t" if transpose_rhs else "moe_gmm",
        cost_estimate=_common.cost(layout, K, N, x.dtype.itemsize),
    )(layout.tile_expert, layout.num_active_tiles, x, w)


def _gmm_swiglu_kernel(te_ref, na_ref, x_ref, w_ref, act_ref, *res_refs, bk, nk, inter):
    i, j = pl.program_id(0), pl.program_id(1)
    bm, bn = act_ref.shape
    active = i < na_ref[0]

    @pl.when(active)
    def _():
        e = te_ref[i]
        rows = pl.ds(pl.multiple_of(i * bm, bm), bm)
        gate_cols = pl.ds(pl.multiple_of(j * bn, bn), bn)
        up_cols = pl.ds(pl.multiple_of(inter + j * bn, bn), bn)

        def body(k, acc):
            ks = pl.ds(pl.multiple_of(k * bk, bk), bk)
            xb = x_ref[rows, ks]
            return (acc[0] + _common.dot(xb, w_ref[e, ks, gate_cols], 1, 0),
                    acc[1] + _common.dot(xb, w_ref[e, ks, up_cols], 1, 0))

        zero = jnp.zeros((bm, bn), F32)
        g, u = jax.lax.fori_loop(0, nk, body, (zero, zero))
        act_ref[...] = _common.swiglu(g, u).astype(act_ref.dtype)
        if res_refs:
            res_refs[0][...] = g.astype(res_refs[0].dtype)
            res_refs[1][...] = u.astype(res_refs[1].dtype)

    @pl.when(jnp.logical_not(active))
    def _():
        for r in (act_ref, *res_refs):
            r[...] = jnp.zeros(r.shape, r.dtype)


def gmm_swiglu(x, w_gate_up, layout, *, residuals: bool):
    """act = silu(x @ W_gate) * (x @ W_up) per row tile, SwiGLU applied to the fp32 accumulators in registers.

    x [M, H], w_gate_up [E, H, 2I] (gate columns, then up) -> act [M, I]; with `residuals` also the pre-activations
    gate, up [M, I] (in the activation dtype) for the backward pass."""
    _common.check_dtype(NAME, x.dtype, w_gate_up.dtype)
    M, K = x.shape
    inter = w_gate_up.shape[2] // 2
    bm = layout.tile
    bk, bn = _blocks("swiglu", K, inter, bm)
    n_out = 3 if residuals else 1
    out = pl.pallas_call(
        functools.partial(_gmm_swiglu_kernel, bk=bk, nk=K // bk, inter=inter),
        grid=(M // bm, inter // bn), in_specs=[_ANY] * 4,
        out_specs=[pl.BlockSpec((bm, bn), lambda i, j: (i, j))] * n_out,
        out_shape=[jax.ShapeDtypeStruct((M, inter), x.dtype)] * n_out, compiler_params=_params(),
        interpret=backend.interpret_mode("gpu"), name="moe_gmm_swiglu",
        cost_estimate=_common.cost(layout, K, 2 * inter, x.dtype.itemsize,
                                   transcendentals_per_row=inter),
    )(layout.tile_expert, layout.num_active_tiles, x, w_gate_up)
    return tuple(out) if residuals else out[0]


def _tgmm_kernel(start_ref, x_ref, dy_ref, o_ref, *, bm):
    e, a, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    bk, bn = o_ref.shape
    ks, ns = pl.ds(pl.multiple_of(a * bk, bk), bk), pl.ds(pl.multiple_of(b * bn, bn), bn)

    def body(t, acc):
        rows = pl.ds(pl.multiple_of(t * bm, bm), bm)
        return acc + _common.dot(x_ref[rows, ks], dy_ref[rows, ns], 0, 0)

    acc = jax.lax.fori_loop(start_ref[e], start_ref[e + 1], body, jnp.zeros((bk, bn), F32))
    o_ref[...] = acc.astype(o_ref.dtype)


def tgmm(x, dy, layout, *, out_dtype=None):
    """The weight gradient: dw[e] = sum over e's row tiles of x[tile].T @ dy[tile]; x [M, K], dy [M, N] -> [E, K, N].
    One program per (expert, K block, N block)."""
    _common.check_dtype(NAME, x.dtype, dy.dtype)
    M, K = x.shape
    N = dy.shape[1]
    E, bm = layout.num_experts, layout.tile
    bk, bn = _blocks("tgmm", K, N, bm)
    return pl.pallas_call(
        functools.partial(_tgmm_kernel, bm=bm), grid=(E, K // bk, N // bn), in_specs=[_ANY] * 3,
        out_specs=pl.BlockSpec((None, bk, bn), lambda e, a, b: (e, a, b)),
        out_shape=jax.ShapeDtypeStruct((E, K, N), out_dtype or x.dtype), compiler_params=_params(),
        interpret=backend.interpret_mode("gpu"), name="moe_tgmm",
        cost_estimate=_common.cost(layout, K, N, x.dtype.itemsize, weight_reads=False),
    )(layout.expert_tile_start, x, dy)
