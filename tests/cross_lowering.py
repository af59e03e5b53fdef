"""Shared by the kernel tests: lowering for TPU or an abstract H100 on a CPU-only machine
(docs/spec/kernels.md §6.4)."""
from __future__ import annotations

import jax
from jax.sharding import AbstractDevice, AbstractMesh, AxisType

from kernels import backend


def abstract_mesh(platform: str, n: int = 1, axis: str = "sequence") -> AbstractMesh:
    """Kernels lower against the device kind of the abstract mesh. Auto axes let shard_map take unsharded specs."""
    device = (AbstractDevice(device_kind="TPU v5p", num_cores=1, platform="tpu") if platform == "tpu" else
              AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu"))
    return AbstractMesh((n,), (axis,), axis_types=(AxisType.Auto if n > 1 else AxisType.Explicit,),
                        abstract_device=device)


def lower_text(f, args, platform: str, n: int = 1, axis: str = "sequence") -> str:
    """Lowers with the platform's default implementation (kernels/backend.py), not interpreted."""
    with backend.target_platform(platform), jax.sharding.use_abstract_mesh(abstract_mesh(platform, n, axis)):
        return jax.jit(f).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def custom_calls(text: str, platform: str) -> int:
    return text.count("tpu_custom_call") if platform == "tpu" else text.count("__gpu$xla.gpu.triton")
