"""Which implementation of a kernel op runs, and whether Pallas interprets it.

Every op has an ordered chain of implementations. The chain starts with the one picked by, in order of precedence,
the caller's `impl=` (the experiment config, e.g. `ModelConfig.moe_impl`), the environment variable
`KERNELS_<OP>_IMPL` (e.g. `KERNELS_MOE_IMPL=pallas_gpu`), or the platform default; "auto" or an empty value defers to
the next source. A named implementation is followed by "xla" alone, never by another platform's kernel. The pure-XLA
reference ("xla") always closes the chain because it takes every shape: a kernel that cannot take a shape raises
`NotImplementedError` while tracing, and `dispatch` moves on (the tokamax pattern, docs/spec/kernels.md §6.2).
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from typing import Callable, Mapping

import jax

XLA = "xla"
IMPLS = {"moe": ("pallas_tpu", "pallas_gpu", "xla_cpu", XLA),
         "attention": ("pallas_tpu", "pallas_gpu", "xla_cpu", XLA),
         "gdn": ("pallas_tpu", "pallas_gpu", "xla_cpu", XLA)}
# Platform defaults. CPU runs XLA: Pallas on CPU only interprets (slow), which is for kernel tests, not for models.
# Where XLA:CPU wants another formulation than the reference, the chain names it "xla_cpu": for "moe" the grouped matmul
# as a batched matmul over row tiles (kernels/moe/gmm_cpu.py; XLA:CPU lowers ragged_dot densely over all experts), for
# "attention" causal query blocks that skip the keys after them (kernels/attention/cpu.py), for "gdn" the chunked form
# with a matmul-only inverse instead of LAPACK's triangular solve (kernels/gdn/chunk.py).
_PLATFORM_CHAINS = {
    "moe": {"tpu": ("pallas_tpu", XLA), "gpu": ("pallas_gpu", XLA), "cuda": ("pallas_gpu", XLA),
            "cpu": ("xla_cpu", XLA)},
    "attention": {"tpu": ("pallas_tpu", XLA), "gpu": ("pallas_gpu", XLA), "cuda": ("pallas_gpu", XLA),
                  "cpu": ("xla_cpu", XLA)},
    "gdn": {"tpu": ("pallas_tpu", XLA), "gpu": ("pallas_gpu", XLA), "cuda": ("pallas_gpu", XLA),
            "cpu": ("xla_cpu", XLA)},
}

# The pure-XLA formulation a platform prefers for an op where it is not the reference: what a model path that names no
# kernel (moe_impl="ragged_dot") runs on that platform.
_XLA_FORMULATIONS = {"moe": {"cpu": "xla_cpu"}}

_NATIVE = {"tpu": ("tpu",), "gpu": ("gpu", "cuda", "rocm")}  # platforms where a kernel kind compiles for real

_log = logging.getLogger(__name__)
_target: contextvars.ContextVar[str | None] = contextvars.ContextVar("kernels_target_platform", default=None)


def env_var(op: str) -> str:
    return f"KERNELS_{op.upper()}_IMPL"


def platform() -> str:
    """The platform kernels are traced for: `jax.default_backend()` unless `target_platform` says otherwise."""
    return _target.get() or jax.default_backend()


@contextlib.contextmanager
def target_platform(name: str):
    """Traces kernels for platform `name` ("tpu", "cuda", ...) on any machine: picks that platform's chain and turns
    interpret mode off, so `jax.jit(f).trace(...).lower(lowering_platforms=(name,))` emits the real kernel
    (cross-lowering, docs/spec/kernels.md §6.4). Only tracing and lowering make sense inside it."""
    token = _target.set(name)
    try:
        yield
    finally:
        _target.reset(token)


def candidates(op: str, impl: str | None = None, platform_name: str | None = None) -> tuple[str, ...]:
    """The implementations to try for `op`, first choice first; always ends with "xla"."""
    if op not in IMPLS:
        raise ValueError(f"unknown kernel op {op!r}; known ops: {sorted(IMPLS)}")
    allowed = IMPLS[op]
    choice = impl if impl not in (None, "", "auto") else os.environ.get(env_var(op), "") or None
    if choice == "auto":
        choice = None
    if choice is not None and choice not in allowed:
        source = "impl argument" if impl not in (None, "", "auto") else f"environment variable {env_var(op)}"
        raise ValueError(f"{source} names {op} implementation {choice!r}; allowed: {('auto',) + allowed}")
    if choice is not None:  # a named implementation, then the reference: never another platform's kernel
        return tuple(dict.fromkeys((choice, XLA)))
    return _PLATFORM_CHAINS[op].get(platform_name or platform(), (XLA,))


def xla_formulation(op: str, platform_name: str | None = None) -> str:
    """The pure-XLA implementation of `op` for the platform ("xla", the reference, unless the platform wants another
    formulation); `KERNELS_<OP>_IMPL=xla` forces the reference."""
    if os.environ.get(env_var(op), "") == XLA:
        return XLA
    return _XLA_FORMULATIONS.get(op, {}).get(platform_name or platform(), XLA)


def dispatch(op: str, table: Mapping[str, Callable], impl: str | None, *args, **kwargs):
    """Calls the first implementation in `candidates(op, impl)` that does not raise NotImplementedError."""
    reasons = []
    for name in candidates(op, impl):
        try:
            return table[name](*args, **kwargs)
        except NotImplementedError as e:
            reasons.append(f"{name}: {e}")
            _log.warning("kernels: %s implementation %r cannot take this call (%s); trying the next one", op, name, e)
    raise NotImplementedError(f"no {op} implementation takes this call: " + "; ".join(reasons))


def interpret_mode(kind: str = "tpu"):
    """The `interpret=` value for a Pallas kernel of `kind` ("tpu" or "gpu") on the current platform.

    Off its own platform (a TPU kernel on CPU or GPU, any kernel on CPU) Pallas can only interpret.
    `KERNELS_INTERPRET=tpu` selects the TPU simulator (DMA, semaphores, race detection) for TPU kernels; it is
    10-30x slower than the plain HLO interpreter, so it is opt-in.
    """
    if platform() in _NATIVE[kind]:
        return False
    if kind == "tpu" and os.environ.get("KERNELS_INTERPRET") == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.InterpretParams(detect_races=True)
    return True
