"""Large host buffers on transparent huge pages: glibc's `glibc.malloc.hugetlb=1` tunable (docs/performance.md,
"Page faults").

On Linux, glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh `mmap` and gives it
back with `munmap`. XLA:CPU allocates a program's large temporaries anew at each call, so each train step faulted
its biggest buffers in again one 4 KiB page at a time: the [T, V] logits of a 4 x 512 x 32,000 step (250 MiB) alone
cost 64,000 minor faults and about 180 ms of kernel time a call. With the tunable glibc asks the kernel for
transparent huge pages on these mappings (`madvise(MADV_HUGEPAGE)`, 2 MiB pages): measured on a 2-core CPU, the tiny
recipe's stage-1 step 946 -> 690 ms, `benchmarks.peers`' 4 x 512 step 2.58 -> 1.91 s.

glibc reads tunables once, when the process starts, so `ensure()` re-executes the process with the tunable added to
GLIBC_TUNABLES (the `a1jax` command does this first, before any work). launch/env.sh exports it for every process
the launch scripts start. Set A1JAX_HUGEPAGES=0 to keep the allocator as it is; nothing changes where the tunable
cannot apply (not Linux with glibc >= 2.35, or transparent huge pages set to "never").
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
SWITCH = "A1JAX_HUGEPAGES"  # "0": leave the allocator alone
THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):  # not glibc (musl, macOS, Windows)
        return None


def _thp_mode(path: str = THP) -> str:
    """The bracketed choice of the kernel's transparent-huge-page setting ("always", "madvise", "never"; "" if
    unknown)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def applies(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process should run with the tunable: Linux, glibc >= 2.35 (which knows it), transparent huge
    pages not switched off, and A1JAX_HUGEPAGES not "0"."""
    env = os.environ if env is None else env
    switch = env.get(SWITCH, "").strip()
    if switch not in ("", "0", "1"):
        raise ValueError(f"{SWITCH}={switch!r}: expected 1 (huge pages for large buffers, the default) or 0 (off)")
    if switch == "0" or not sys.platform.startswith("linux"):
        return False
    version = _glibc_version()
    return version is not None and version >= (2, 35) and _thp_mode() != "never"


def has_tunable(env: Mapping[str, str]) -> bool:
    return TUNABLE in env.get("GLIBC_TUNABLES", "").split(":")


def environ(env: Mapping[str, str] | None = None, on: bool = True) -> dict[str, str]:
    """A copy of `env` (default os.environ) for subprocesses: with the tunable added to GLIBC_TUNABLES, the other
    tunables kept (unchanged where `applies()` says no); or (on=False) on glibc's defaults: no hugetlb tunable and
    A1JAX_HUGEPAGES=0, so that an a1jax process started with it does not add it back."""
    out = dict(os.environ if env is None else env)
    if on and (not applies(out) or has_tunable(out)):
        return out
    if not on:
        out[SWITCH] = "0"
    rest = [t for t in out.pop("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb=")]
    if on or rest:
        out["GLIBC_TUNABLES"] = ":".join(rest + ([TUNABLE] if on else []))
    return out


def ensure() -> None:
    """Re-executes this process (same interpreter, same arguments, same pid) with the tunable, once, where it applies
    and is missing. Call it first thing in a program's entry point: nothing before it runs twice harmlessly."""
    env = environ()
    if has_tunable(env) and not has_tunable(os.environ):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)
