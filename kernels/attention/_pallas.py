"""Pallas plumbing shared by the attention and DeltaNet kernels: implementation choice, interpret mode, compiler params.

Two kernel variants exist for every sequential loop (a flash kv loop, a DeltaNet chunk walk):
  * "tpu" (Mosaic): the loop is the last grid axis ("arbitrary") and the carry lives in VMEM scratch, so blocks stream
    through VMEM with double-buffered DMA and nothing long-lived has to fit on chip but the carry.
  * "triton" (GPU): Triton grids are parallel only and have no scratch, so the loop is an in-kernel `fori_loop` over
    slices of whole-sequence refs (global memory), with the carry in registers.
Both run on CPU under `interpret=True` (kernels.md §1.1), which is how the tests exercise them.
"""
from __future__ import annotations

import os

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

IMPLS = ("xla", "pallas_tpu", "pallas_gpu")
ENV_IMPL = "A1JAX_SEQUENCE_KERNELS"  # overrides the platform default, e.g. to run Pallas interpreted on CPU


def select_impl(impl: str | None) -> str:
    """`impl` if given, else $A1JAX_SEQUENCE_KERNELS, else by platform: TPU -> Mosaic, GPU -> Triton, CPU -> xla.

    The CPU default is the pure-jnp path: interpreted Pallas is for tests, not for running a model."""
    if impl is None:
        impl = os.environ.get(ENV_IMPL) or {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}.get(
            jax.default_backend(), "xla")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def variant_of(impl: str) -> str:
    return {"pallas_tpu": "tpu", "pallas_gpu": "triton"}[impl]


def default_interpret() -> bool:
    """Pallas kernels only run interpreted on CPU; lowering tests pass interpret=False explicitly."""
    return jax.default_backend() == "cpu"


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
         num_warps: int = 4, num_stages: int = 2):
    """pl.pallas_call with the variant's compiler params; scratch is TPU-only (Triton kernels keep carries in regs)."""
    return pl.pallas_call(
        kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=tuple(scratch) if variant == "tpu" else (),
        compiler_params=compiler_params(variant, semantics, num_warps, num_stages),
        interpret=interpret, name=name)


def vmem(shape, dtype):
    return pltpu.VMEM(shape, dtype)
