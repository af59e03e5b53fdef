"""Pallas plumbing shared by the attention and DeltaNet kernels: implementation choice, interpret mode, compiler params.

Two kernel variants exist for every sequential loop (a flash kv loop, a DeltaNet chunk walk):
  * "tpu" (Mosaic): the loop is the last grid axis ("arbitrary") and the carry lives in VMEM scratch, so blocks stream
    through VMEM with double-buffered DMA and nothing long-lived has to fit on chip but the carry.
  * "triton" (GPU): Triton grids are parallel only and have no scratch, so the loop is an in-kernel `fori_loop` over
    slices of whole-sequence refs (global memory), with the carry in registers.
Both run on CPU under `interpret=True` (docs/spec/kernels.md §1.1), which is how the tests exercise them. Which
implementation runs ("xla", "pallas_tpu", "pallas_gpu") is kernels/backend.py's choice, for the ops "attention" and
"gdn".
"""
from __future__ import annotations

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from kernels import backend



def variant_of(impl: str) -> str:
    """Kernel variant of a kernels/backend.py implementation name."""
    return {"pallas_tpu": "tpu", "pallas_gpu": "triton"}[impl]


def interpret_default(variant: str):
    """Interpret unless the platform (or `backend.target_platform`) can compile this variant; see kernels/backend.py."""
    return backend.interpret_mode("tpu" if variant == "tpu" else "gpu")


def compiler_params(variant: str, semantics: tuple[str, ...], num_warps: int = 4, num_stages: int = 2):
    """TPU: which grid axes may run in parallel (megacore). GPU: the params' type selects the Triton backend."""
    if variant == "tpu":
        return pltpu.CompilerParams(dimension_semantics=semantics)
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def out_struct(shape, dtype, like):
    """A pallas_call out_shape that carries `like`'s manual (shard_map) axes, which check_vma=True requires."""
    mat = getattr(jax.typeof(like), "manual_axis_type", None)
    if mat is not None:
        return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat)
    vma = getattr(jax.typeof(like), "vma", None)  # jax 0.11
    if vma:
        return jax.ShapeDtypeStruct(shape, dtype, vma=vma)
    return jax.ShapeDtypeStruct(shape, dtype)


def call(kernel, *, variant, grid, in_specs, out_specs, out_shape, semantics, interpret, scratch=(), name=None,
         num_warps: int = 4, num_stages: int = 2, cost=None):
    """pl.pallas_call with the variant's compiler params; scratch is TPU-only (Triton kernels keep carries in regs).
    `cost` (pl.CostEstimate) is the work the kernel does, skipped blocks left out: XLA and `a1jax plan` read it."""
    return pl.pallas_call(
        kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=tuple(scratch) if variant == "tpu" else (),
        compiler_params=compiler_params(variant, semantics, num_warps, num_stages),
        interpret=interpret, name=name, cost_estimate=cost)


def vmem(shape, dtype):
    return pltpu.VMEM(shape, dtype)
