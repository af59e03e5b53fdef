"""The grouped matmuls' custom_vjp, and the expert MLP on tile-aligned rows for every implementation.

Pallas calls have no transpose rule (docs/spec/kernels.md §1.2), so each kernel pair is tied together here
(megablox-style):
    y = gmm(x, w)                   dx = gmm(dy, w^T)             dw = tgmm(x, dy)
    act = swiglu(x @ [Wg | Wu])     dh = swiglu'(gate, up) * dact  dx = gmm(dh, [Wg | Wu]^T), dw = tgmm(x, dh)
The backward kernels run on the same tile-aligned layout as the forward, so they need no new permutation.

`expert_mlp` is the one place where the implementations differ: Pallas kernels for "pallas_tpu"/"pallas_gpu", a
batched matmul over row tiles for "xla_cpu" (kernels/moe/gmm_cpu.py),
`jax.lax.ragged_dot` (the reference, `kernels.reference.moe.gmm`) for "xla".
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels.moe import _common, gmm_cpu, gmm_gpu, gmm_tpu
from kernels.moe.routing import Layout
from kernels.reference import moe as reference

KERNELS = {gmm_tpu.NAME: gmm_tpu, gmm_gpu.NAME: gmm_gpu, gmm_cpu.NAME: gmm_cpu}


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gmm_aligned(x, w, layout: Layout, impl: str):
    """x [M, K] in the tile-aligned layout, w [E, K, N] -> [M, N] with the `impl` kernels."""
    return KERNELS[impl].gmm(x, w, layout)


def _gmm_fwd(x, w, layout, impl):
    return gmm_aligned(x, w, layout, impl), (x, w, layout)


def _gmm_bwd(impl, res, dy):
    x, w, layout = res
    kernels = KERNELS[impl]
    dy = dy.astype(x.dtype)
    return kernels.gmm(dy, w, layout, transpose_rhs=True), kernels.tgmm(x, dy, layout, out_dtype=w.dtype), None


gmm_aligned.defvjp(_gmm_fwd, _gmm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gmm_swiglu_aligned(x, w_gate_up, layout: Layout, impl: str):
    """silu(x @ W_gate) * (x @ W_up) for x [M, H] in the tile-aligned layout, w_gate_up [E, H, 2I] -> [M, I]."""
    return KERNELS[impl].gmm_swiglu(x, w_gate_up, layout, residuals=False)


def _gmm_swiglu_fwd(x, w_gate_up, layout, impl):
    act, gate, up = KERNELS[impl].gmm_swiglu(x, w_gate_up, layout, residuals=True)
    return act, (x, w_gate_up, layout, gate, up)


def _gmm_swiglu_bwd(impl, res, d_act):
    x, w_gate_up, layout, gate, up = res
    kernels = KERNELS[impl]
    dh = jnp.concatenate(_common.swiglu_bwd(gate, up, d_act), axis=1).astype(x.dtype)  # [M, 2I], gate then up
    dx = kernels.gmm(dh, w_gate_up, layout, transpose_rhs=True)
    return dx, kernels.tgmm(x, dh, layout, out_dtype=w_gate_up.dtype), None


gmm_swiglu_aligned.defvjp(_gmm_swiglu_fwd, _gmm_swiglu_bwd)


def row_tile(impl: str, rows: int, num_experts: int, dtype) -> int:
    """The row tile `impl` wants for `rows` routed rows over `num_experts` experts; 1 (no padding) for XLA."""
    if impl == "xla":
        return 1
    return KERNELS[impl].row_tile(rows / max(num_experts, 1), dtype)


def validate(impl: str, hidden: int, inter: int, dtype, tile: int) -> None:
    """NotImplementedError unless `impl` takes the expert MLP's shapes (forward and backward kernels)."""
    if impl == "xla":
        return
    _common.check_dtype(impl, dtype)
    KERNELS[impl].validate(hidden, 2 * inter, dtype, tile, fused=True)
    KERNELS[impl].validate(inter, hidden, dtype, tile)


def expert_mlp(x_sorted, w_gate_up, w_down, layout: Layout, impl: str):
    """SwiGLU experts on tile-aligned rows: x_sorted [cap, H] -> [cap, H] (padding rows give 0).

    Numerics follow the model: fp32 accumulation, the activation and the output rounded to x's dtype."""
    if impl == "xla":
        sizes = (layout.expert_tile_start[1:] - layout.expert_tile_start[:-1]) * layout.tile
        inter = w_down.shape[1]
        h = jax.lax.ragged_dot(x_sorted, w_gate_up, sizes, preferred_element_type=_common.F32)
        act = _common.swiglu(h[:, :inter], h[:, inter:]).astype(x_sorted.dtype)
        return reference.gmm(act, w_down, sizes)
    act = gmm_swiglu_aligned(x_sorted, w_gate_up, layout, impl)
    return gmm_aligned(act, w_down, layout, impl)
