"""Pieces the TPU and GPU grouped-matmul kernels share: block-size choice, the in-kernel dot, SwiGLU."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

F32 = jnp.float32
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def check_dtype(backend: str, *dtypes) -> None:
    dtypes = {jnp.dtype(d) for d in dtypes}
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPES:
        raise NotImplementedError(f"{backend} grouped matmul takes one dtype among float32/bfloat16/float16 for "
                                  f"all operands, got {sorted(str(d) for d in dtypes)}")


def block(backend: str, what: str, dim: int, preferred: int, quantum: int, *, full_ok: bool = True,
          pow2: bool = False) -> int:
    """The largest block <= `preferred` that divides `dim` and is a multiple of `quantum` (a power of two if `pow2`);
    `dim` itself if it is small enough and the backend accepts whole dimensions. NotImplementedError otherwise."""
    if dim <= preferred and full_ok and (not pow2 or dim & (dim - 1) == 0):
        return dim
    b = preferred
    while b >= quantum:
        if dim % b == 0 and b % quantum == 0 and (not pow2 or b & (b - 1) == 0):
            return b
        b = b // 2 if pow2 else b - quantum
    rule = f"a {'power of two, ' if pow2 else ''}multiple of {quantum} dividing it"
    raise NotImplementedError(f"{backend}: no block for {what}={dim} (needs {rule}, at most {preferred}"
                              f"{', or the whole dimension' if full_ok else ''})")


def precision(dtype):
    """fp32 operands get full-precision MXU/tensor-core passes (TF32 would miss the 1e-5 parity bound)."""
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.dtype(F32) else jax.lax.Precision.DEFAULT


def dot(a, b, contract_a: int, contract_b: int):
    """One 2-D block product with fp32 accumulation; contract_* pick the contracted axis (0 or 1) of each side."""
    return jax.lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((), ())), preferred_element_type=F32,
                               precision=precision(a.dtype))


def swiglu(gate, up):
    return jax.nn.silu(gate) * up


def swiglu_bwd(gate, up, d_act):
    """Cotangents of act = silu(gate) * up, in fp32: d silu(g)/dg = s (1 + g (1 - s)) with s = sigmoid(g)."""
    gate, up, d_act = gate.astype(F32), up.astype(F32), d_act.astype(F32)
    s = jax.nn.sigmoid(gate)
    return d_act * up * s * (1 + gate * (1 - s)), d_act * gate * s


def cost(layout, k: int, n: int, itemsize: int, *, weight_reads: bool = True, transcendentals_per_row: int = 0):
    """pl.CostEstimate of a grouped matmul over the row tiles that hold rows (`routing.expected_tile_rows`), not over
    the whole buffer: [rows, k] x [k, n] per tile, one [k, n] weight block read per row tile (`weight_reads`)."""
    from kernels.moe.routing import expected_tile_rows
    rows = expected_tile_rows(layout)
    tiles = rows // layout.tile
    weights = tiles * k * n if weight_reads else layout.num_experts * k * n
    return pl.CostEstimate(flops=int(2 * rows * k * n), transcendentals=int(rows * transcendentals_per_row),
                           bytes_accessed=int(itemsize * (rows * k + rows * n + weights)))
