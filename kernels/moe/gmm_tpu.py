"""Grouped matmul for TPU (Mosaic): the tile -> expert map is scalar-prefetched into SMEM and drives the BlockSpec
index maps, so the pipeline DMAs exactly the weight block each row tile needs (docs/spec/kernels.md §3.2,
aligned variant).

Rows arrive in the tile-aligned layout of `kernels.moe.routing` (every row tile belongs to one expert), so unlike
megablox no tile straddles two experts: no masks, no double visits. The custom_vjp tying these kernels together, and
the XLA path they must match, are in `kernels.moe.grouped`; the pure-jnp reference is `kernels.reference.moe.gmm`.

Blocks obey the Mosaic rule (last two block dims divisible by (8, 128), 16 sublanes for 16-bit types, or equal to
the whole dimension); a shape without such blocks raises NotImplementedError and the caller falls back to XLA.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels import backend
from kernels.moe import _common
from kernels.moe._common import F32

NAME = "pallas_tpu"
LANE, PREF = 128, 512  # lane quantum; preferred K and N block (MXU-friendly, ~2 MiB of VMEM per step in bf16)


def _sublane(dtype) -> int:
    return 8 * (4 // jnp.dtype(dtype).itemsize)


def row_tile(rows_per_expert: float, dtype) -> int:
    """Row tile for a given mean load: about a quarter of it (expected padding <= 1/8 of the rows), in
    [sublane quantum, 128]."""
    lo = _sublane(dtype)
    t = lo
    while t * 2 <= min(128, rows_per_expert / 4):
        t *= 2
    return t


def _blocks(op: str, k: int, n: int, dtype, tile: int):
    """(bk, bn) for `op` in {"gmm", "gmm_t", "swiglu", "tgmm"} with contraction k and output width n."""
    if tile % _sublane(dtype):
        raise NotImplementedError(f"{NAME}: row tile {tile} is not a multiple of {_sublane(dtype)} for {dtype}")
    bk = _common.block(NAME, "contraction dim" if op != "tgmm" else "weight rows", k, PREF, LANE)
    bn = _common.block(NAME, "output dim", n, PREF, LANE, full_ok=op != "swiglu")
    return bk, bn


def validate(k: int, n: int, dtype, tile: int, *, fused: bool = False) -> None:
    """Raises NotImplementedError unless every kernel of the forward and backward of a [*, k] x [E, k, n] grouped
    matmul has legal blocks (checked up front: the backward is traced only when differentiating, too late to fall
    back). `fused`: n = 2I is the gate|up pair consumed by `gmm_swiglu`."""
    _blocks("swiglu" if fused else "gmm", k, n // 2 if fused else n, dtype, tile)
    _blocks("gmm_t", n, k, dtype, tile)
    _blocks("tgmm", k, n, dtype, tile)


def _params(*semantics):
    return pltpu.CompilerParams(dimension_semantics=semantics)


def _active_row_tile(i, num_active):
    """Tiles past the used ones re-read the last used row block: an unchanged block index costs no DMA."""
    return jnp.minimum(i, jnp.maximum(num_active[0] - 1, 0))


def _gmm_kernel(te_ref, na_ref, x_ref, w_ref, o_ref, acc_ref, *, transpose_rhs):
    i, k = pl.program_id(0), pl.program_id(2)

    @pl.when(k == 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(i < na_ref[0])
    def _():
        acc_ref[...] += _common.dot(x_ref[...], w_ref[...], 1, 1 if transpose_rhs else 0)

    @pl.when(k == pl.num_programs(2) - 1)
    def _():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def gmm(x, w, layout, *, transpose_rhs: bool = False):
    """y[tile i] = x[tile i] @ w[tile_expert[i]] (or @ w[...].T): x [M, K], w [E, K, N] ([E, N, K]) -> [M, N]."""
    _common.check_dtype(NAME, x.dtype, w.dtype)
    M, K = x.shape
    N = w.shape[1] if transpose_rhs else w.shape[2]
    bm = layout.tile
    bk, bn = _blocks("gmm_t" if transpose_rhs else "gmm", K, N, x.dtype, bm)
    if transpose_rhs:
        w_spec = pl.BlockSpec((None, bn, bk), lambda i, j, k, te, na: (te[i], j, k))
    else:
        w_spec = pl.BlockSpec((None, bk, bn), lambda i, j, k, te, na: (te[i], k, j))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2, grid=(M // bm, N // bn, K // bk),
        in_specs=[pl.BlockSpec((bm, bk), lambda i, j, k, te, na: (_active_row_tile(i, na), k)), w_spec],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j, k, te, na: (i, j)),
        scratch_shapes=[pltpu.VMEM((bm, bn), F32)])
    return pl.pallas_call(
        functools.partial(_gmm_kernel, transpose_rhs=transpose_rhs), grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((M, N), x.dtype),
        compiler_params=_params("parallel", "parallel", "arbitrary"),
        interpret=backend.interpret_mode("tpu"), name="moe_gmm_t" if transpose_rhs else "moe_gmm",
        cost_estimate=_common.cost(layout, K, N, x.dtype.itemsize),
    )(layout.tile_expert, layout.num_active_tiles, x, w)


def _gmm_swiglu_kernel(te_ref, na_ref, x_ref, wg_ref, wu_ref, *refs, residuals):
    act_ref, *res_refs, acc_g, acc_u = refs
    i, k = pl.program_id(0), pl.program_id(2)

    @pl.when(k == 0)
    def _():
        acc_g[...] = jnp.zeros_like(acc_g)
        acc_u[...] = jnp.zeros_like(acc_u)

    @pl.when(i < na_ref[0])
    def _():
        xb = x_ref[...]
        acc_g[...] += _common.dot(xb, wg_ref[...], 1, 0)
        acc_u[...] += _common.dot(xb, wu_ref[...], 1, 0)

    @pl.when(k == pl.num_programs(2) - 1)
    def _():
        g, u = acc_g[...], acc_u[...]
        act_ref[...] = _common.swiglu(g, u).astype(act_ref.dtype)
        if residuals:
            res_refs[0][...] = g.astype(res_refs[0].dtype)
            res_refs[1][...] = u.astype(res_refs[1].dtype)


def gmm_swiglu(x, w_gate_up, layout, *, residuals: bool):
    """act = silu(x @ W_gate) * (x @ W_up) per row tile, with the SwiGLU applied to the fp32 accumulators in VMEM.

    x [M, H], w_gate_up [E, H, 2I] (gate columns, then up) -> act [M, I]; with `residuals` also the pre-activations
    gate, up [M, I] (in the activation dtype, half the memory of fp32) for the backward pass."""
    _common.check_dtype(NAME, x.dtype, w_gate_up.dtype)
    M, K = x.shape
    inter = w_gate_up.shape[2] // 2
    bm = layout.tile
    bk, bn = _blocks("swiglu", K, inter, x.dtype, bm)
    up_off = inter // bn
    out_spec = pl.BlockSpec((bm, bn), lambda i, j, k, te, na: (i, j))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2, grid=(M // bm, inter // bn, K // bk),
        in_specs=[pl.BlockSpec((bm, bk), lambda i, j, k, te, na: (_active_row_tile(i, na), k)),
                  pl.BlockSpec((None, bk, bn), lambda i, j, k, te, na: (te[i], k, j)),
                  pl.BlockSpec((None, bk, bn), lambda i, j, k, te, na: (te[i], k, j + up_off))],
        out_specs=[out_spec] * (3 if residuals else 1),
        scratch_shapes=[pltpu.VMEM((bm, bn), F32), pltpu.VMEM((bm, bn), F32)])
    out = pl.pallas_call(
        functools.partial(_gmm_swiglu_kernel, residuals=residuals), grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct((M, inter), x.dtype)] * (3 if residuals else 1),
        compiler_params=_params("parallel", "parallel", "arbitrary"),
        interpret=backend.interpret_mode("tpu"), name="moe_gmm_swiglu",
        cost_estimate=_common.cost(layout, K, 2 * inter, x.dtype.itemsize,
                                   transcendentals_per_row=inter),
    )(layout.tile_expert, layout.num_active_tiles, x, w_gate_up, w_gate_up)
    return tuple(out) if residuals else out[0]


_FIRST, _LAST, _VALID = 1, 2, 4


def _tgmm_schedule(layout):
    """One grid step per (expert, tile) pair, and one data-free visit for each empty expert so that its weight
    gradient block is still written (with zeros). Steps past the last visit repeat it with no flags set.

    Returns (tile [S], expert [S], flags [S]) with S = num_tiles + E, a static bound."""
    starts = layout.expert_tile_start
    num_tiles, E = layout.tile_expert.shape[0], layout.num_experts
    ntiles = starts[1:] - starts[:-1]
    visits = jnp.maximum(ntiles, 1)
    visit_end = jnp.cumsum(visits)
    s = jnp.arange(num_tiles + E, dtype=jnp.int32)
    e = jnp.minimum(jnp.searchsorted(visit_end, s, side="right"), E - 1).astype(jnp.int32)
    j = s - (visit_end - visits)[e]
    real = s < visit_end[-1]
    tile = jnp.clip(starts[e] + j, 0, num_tiles - 1)
    tile = jnp.where(real, tile, tile[visit_end[-1] - 1])
    flags = (jnp.where(real & (j == 0), _FIRST, 0) | jnp.where(real & (j == visits[e] - 1), _LAST, 0)
             | jnp.where(real & (j < ntiles[e]), _VALID, 0))
    return tile.astype(jnp.int32), e, flags.astype(jnp.int32)


def _tgmm_kernel(tile_ref, expert_ref, flags_ref, x_ref, dy_ref, o_ref, acc_ref):
    flags = flags_ref[pl.program_id(2)]

    @pl.when(flags & _FIRST != 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(flags & _VALID != 0)
    def _():
        acc_ref[...] += _common.dot(x_ref[...], dy_ref[...], 0, 0)

    @pl.when(flags & _LAST != 0)
    def _():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def tgmm(x, dy, layout, *, out_dtype=None):
    """The weight gradient: dw[e] = sum over e's row tiles of x[tile].T @ dy[tile]; x [M, K], dy [M, N] -> [E, K, N].

    The tile axis is innermost and sequential ("arbitrary"), so consecutive tiles of one expert accumulate into one
    VMEM block that is written once, when the expert's last tile is done."""
    _common.check_dtype(NAME, x.dtype, dy.dtype)
    M, K = x.shape
    N = dy.shape[1]
    E, bm = layout.num_experts, layout.tile
    bk, bn = _blocks("tgmm", K, N, x.dtype, bm)
    tile, expert, flags = _tgmm_schedule(layout)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=3, grid=(K // bk, N // bn, tile.shape[0]),
        in_specs=[pl.BlockSpec((bm, bk), lambda a, b, s, t, e, f: (t[s], a)),
                  pl.BlockSpec((bm, bn), lambda a, b, s, t, e, f: (t[s], b))],
        out_specs=pl.BlockSpec((None, bk, bn), lambda a, b, s, t, e, f: (e[s], a, b)),
        scratch_shapes=[pltpu.VMEM((bk, bn), F32)])
    return pl.pallas_call(
        _tgmm_kernel, grid_spec=grid_spec, out_shape=jax.ShapeDtypeStruct((E, K, N), out_dtype or x.dtype),
        compiler_params=_params("parallel", "parallel", "arbitrary"),
        interpret=backend.interpret_mode("tpu"), name="moe_tgmm",
        cost_estimate=_common.cost(layout, K, N, x.dtype.itemsize, weight_reads=False),
    )(tile, expert, flags, x, dy)
