"""Grouped matmul for XLA:CPU: a batched matmul over row tiles, each tile with its own expert's weight matrix.

XLA:CPU has no native `jax.lax.ragged_dot`: it lowers it to a dense matmul of a masked [M, E*K] operand against all
experts, E times the routed work. Here rows arrive in the tile-aligned layout of `kernels.moe.routing` (every row tile
belongs to one expert), so the grouped matmul is a plain batched matmul of the [tiles, tile, K] rows against the
[tiles, K, N] weights gathered by `layout.tile_expert`: only the routed rows plus the tile padding are multiplied, and
the cost follows the routed work, not the expert count. The weight gradient multiplies tile by tile and sums each
expert's tiles (a segment sum over the contiguous tiles of one expert).

Pure XLA (no Pallas), so it also partitions under SPMD. It implements the interface of `gmm_tpu`/`gmm_gpu`
(`gmm`, `gmm_swiglu`, `tgmm`, `row_tile`, `validate`); `kernels.moe.grouped` ties them together with a custom_vjp.
The reference it must match is `kernels.reference.moe.gmm` (`jax.lax.ragged_dot`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.moe import _common
from kernels.moe._common import F32

NAME = "xla_cpu"
MIN_TILE, MAX_TILE = 8, 256


def row_tile(rows_per_expert: float, dtype) -> int:
    """About half the mean load per expert (expected padding <= 1/4 of the rows), a power of two in [8, 256]:
    larger tiles mean fewer weight copies and larger matmuls, smaller ones less padding."""
    del dtype
    t = MIN_TILE
    while t * 2 <= min(MAX_TILE, rows_per_expert / 2):
        t *= 2
    return t


def validate(k: int, n: int, dtype, tile: int, *, fused: bool = False) -> None:
    """Takes every shape; only the dtypes are checked (one float dtype for all operands)."""
    del k, n, tile, fused
    _common.check_dtype(NAME, dtype)


def _tiles(x, tile: int):
    return x.reshape(x.shape[0] // tile, tile, *x.shape[1:])


def _tile_weights(w, layout):
    return jnp.take(w, layout.tile_expert, axis=0)  # [tiles, K, N]: each row tile's expert matrix


def _active(y, layout):
    """Zeros the rows of tiles past `num_active_tiles` (their weights belong to the last used expert)."""
    live = jnp.arange(y.shape[0] // layout.tile) < layout.num_active_tiles[0]
    return jnp.where(jnp.repeat(live, layout.tile)[:, None], y, jnp.zeros((), y.dtype))


def _batched(x, w, layout, transpose_rhs: bool):
    xt = _tiles(x, layout.tile)
    wt = _tile_weights(w, layout)
    spec = "tmk,tnk->tmn" if transpose_rhs else "tmk,tkn->tmn"
    y = jnp.einsum(spec, xt, wt, preferred_element_type=F32, precision=_common.precision(x.dtype))
    return y.reshape(x.shape[0], -1)


def gmm(x, w, layout, *, transpose_rhs: bool = False):
    """x [M, K] in the tile-aligned layout, w [E, K, N] (or [E, N, K] with `transpose_rhs`) -> [M, N] in x's dtype;
    padding rows give 0."""
    _common.check_dtype(NAME, x.dtype, w.dtype)
    return _active(_batched(x, w, layout, transpose_rhs).astype(x.dtype), layout)


def gmm_swiglu(x, w_gate_up, layout, *, residuals: bool):
    """act = silu(x @ W_gate) * (x @ W_up) on the tile-aligned rows; x [M, H], w_gate_up [E, H, 2I] -> act [M, I];
    with `residuals` also the pre-activations gate, up [M, I] in x's dtype."""
    _common.check_dtype(NAME, x.dtype, w_gate_up.dtype)
    inter = w_gate_up.shape[2] // 2
    h = _batched(x, w_gate_up, layout, False)
    gate, up = h[:, :inter], h[:, inter:]
    act = _active(_common.swiglu(gate, up).astype(x.dtype), layout)
    if not residuals:
        return act
    return act, gate.astype(x.dtype), up.astype(x.dtype)


def tgmm(x, dy, layout, *, out_dtype=None):
    """The weight gradient: dw[e] = sum over e's row tiles of x[tile].T @ dy[tile]; x [M, K], dy [M, N] -> [E, K, N].

    Tiles past `num_active_tiles` hold zero rows of x, so they add nothing to the expert they are mapped to."""
    _common.check_dtype(NAME, x.dtype, dy.dtype)
    per_tile = jnp.einsum("tmk,tmn->tkn", _tiles(x, layout.tile), _tiles(dy, layout.tile), preferred_element_type=F32,
                          precision=_common.precision(x.dtype))
    dw = jax.ops.segment_sum(per_tile, layout.tile_expert, num_segments=layout.num_experts, indices_are_sorted=True)
    return dw.astype(out_dtype or x.dtype)
