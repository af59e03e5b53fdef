"""Pure-jnp references for the kernels: same signatures, plain autodiff, no Pallas (docs/spec/kernels.md §6.1)."""
from kernels.reference import moe  # noqa: F401
from kernels.reference import attention, gdn  # noqa: F401
