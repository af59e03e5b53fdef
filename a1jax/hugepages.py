"""The host allocator for large buffers: tcmalloc where it is installed, and glibc's `glibc.malloc.hugetlb=1`
tunable (transparent huge pages) (docs/performance.md, "Page faults" and "Memory the host takes back").

On Linux, glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh `mmap` and gives it
back with `munmap`. XLA:CPU allocates a program's large temporaries anew at each call, so each train step faulted
its biggest buffers in again one 4 KiB page at a time: the [T, V] logits of a 4 x 512 x 32,000 step (250 MiB) alone
cost 64,000 minor faults and about 180 ms of kernel time a call. With the tunable glibc asks the kernel for
transparent huge pages on these mappings (`madvise(MADV_HUGEPAGE)`, 2 MiB pages): measured on a 2-core CPU, the tiny
recipe's stage-1 step 946 -> 690 ms, `benchmarks.peers`' 4 x 512 step 2.58 -> 1.91 s.

glibc still unmaps those buffers when they are freed. On a virtual machine whose balloon device reports free memory
to the host (virtio-balloon free page reporting: free 2 MiB blocks, after about 2 s), the host then takes that memory
back, and the next step faults it in again from the host: measured on the 2-core CPU VM, a 4 x 512 step of
`benchmarks.peers`' model took 1.2 s back to back but 2.0-3.7 s after a pause of 2-20 s (the first update after each
rollout batch in stage 3, a benchmark's side after the other side's turn). tcmalloc keeps freed memory in the
process and re-uses it: the same step took 1.05 s back to back and after every pause. So where tcmalloc is installed
(`libtcmalloc_minimal.so.4`, Debian/Ubuntu package libtcmalloc-minimal4, which launch/env.sh installs when it can)
it is preloaded (LD_PRELOAD), with its report of allocations above 1 GiB silenced; the glibc tunable still applies
to processes that run without it. Results are bitwise the same with either allocator.

glibc reads tunables, and the dynamic loader LD_PRELOAD, once, when the process starts, so `ensure()` re-executes
the process with both (the `a1jax` command does this first, before any work). launch/env.sh exports them for every
process the launch scripts start (`python a1jax/hugepages.py --exports` prints the shell lines). Set
A1JAX_HUGEPAGES=0 to keep the allocator as it is, A1JAX_TCMALLOC=0 for the glibc tunable alone, or
A1JAX_TCMALLOC=/path/to/libtcmalloc.so for another build; nothing changes where neither can apply (not Linux, no
tcmalloc, glibc < 2.35 or transparent huge pages set to "never").
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
SWITCH = "A1JAX_HUGEPAGES"  # "0": leave the allocator alone
TCMALLOC_SWITCH = "A1JAX_TCMALLOC"  # "0": no tcmalloc; a path: that library
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
            "/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/usr/local/lib")
QUIET = ("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 50))  # else every allocation above 1 GiB is reported
ALLOCATOR_VARS = ("GLIBC_TUNABLES", "LD_PRELOAD", QUIET[0])
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


def _switch(env: Mapping[str, str]) -> bool:
    """A1JAX_HUGEPAGES: False for "0", True otherwise; any other value than 0 or 1 is refused, naming it."""
    switch = env.get(SWITCH, "").strip()
    if switch not in ("", "0", "1"):
        raise ValueError(f"{SWITCH}={switch!r}: expected 1 (huge pages for large buffers, the default) or 0 (off)")
    return switch != "0"


def applies(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process should run with the glibc tunable: Linux, glibc >= 2.35 (which knows it), transparent
    huge pages not switched off, and A1JAX_HUGEPAGES not "0"."""
    env = os.environ if env is None else env
    if not _switch(env) or not sys.platform.startswith("linux"):
        return False
    version = _glibc_version()
    return version is not None and version >= (2, 35) and _thp_mode() != "never"


def tcmalloc(env: Mapping[str, str] | None = None) -> str:
    """The tcmalloc library to preload: A1JAX_TCMALLOC's path, else the first installed one of TCMALLOC_NAMES in
    LIB_DIRS; "" on other systems than Linux, when none is installed, or with A1JAX_HUGEPAGES or A1JAX_TCMALLOC 0."""
    env = os.environ if env is None else env
    choice = env.get(TCMALLOC_SWITCH, "").strip()
    if not _switch(env) or choice == "0" or not sys.platform.startswith("linux"):
        return ""
    if choice not in ("", "1"):
        if not os.path.isfile(choice):
            raise ValueError(f"{TCMALLOC_SWITCH}={choice!r}: expected 1 (tcmalloc where installed, the default), 0 "
                             "(off) or the path of a tcmalloc library; that file does not exist")
        return choice
    for folder in LIB_DIRS:
        for name in TCMALLOC_NAMES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return ""


def has_tunable(env: Mapping[str, str]) -> bool:
    return TUNABLE in env.get("GLIBC_TUNABLES", "").split(":")


def _preloads(env: Mapping[str, str]) -> list[str]:
    return env.get("LD_PRELOAD", "").replace(":", " ").split()


def _is_tcmalloc(entry: str) -> bool:
    return os.path.basename(entry).startswith("libtcmalloc")


def environ(env: Mapping[str, str] | None = None, on: bool = True) -> dict[str, str]:
    """A copy of `env` (default os.environ) for subprocesses: tcmalloc first in LD_PRELOAD (where `tcmalloc()` finds
    one) and the tunable added to GLIBC_TUNABLES (where `applies()` says so), the other entries kept; or (on=False)
    the system allocator on glibc's defaults: no tcmalloc, no hugetlb tunable and A1JAX_HUGEPAGES=0, so that an
    a1jax process started with it does not add them back."""
    out = dict(os.environ if env is None else env)
    if not on:
        out[SWITCH] = "0"
    preload = [e for e in _preloads(out) if not _is_tcmalloc(e)]
    lib = tcmalloc(out) if on else ""
    if lib:
        out["LD_PRELOAD"] = " ".join([lib] + preload)
        out.setdefault(*QUIET)
    elif not on:
        out.pop(QUIET[0], None)
        if preload:
            out["LD_PRELOAD"] = " ".join(preload)
        else:
            out.pop("LD_PRELOAD", None)
    if on and (not applies(out) or has_tunable(out)):
        return out
    rest = [t for t in out.pop("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb=")]
    if on or rest:
        out["GLIBC_TUNABLES"] = ":".join(rest + ([TUNABLE] if on else []))
    return out


def changes(env: Mapping[str, str] | None = None, new: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allocator variables `new` (default `environ(env)`) sets differently from `env` (default os.environ)."""
    env = os.environ if env is None else env
    new = environ(env) if new is None else new
    return {k: new[k] for k in ALLOCATOR_VARS if k in new and new[k] != env.get(k)}


def ensure() -> None:
    """Re-executes this process (same interpreter, same arguments, same pid) with the allocator environment, once,
    where it applies and is missing. Call it first thing in a program's entry point: nothing before it runs twice
    harmlessly."""
    env = environ()
    if changes(os.environ, env):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)


if __name__ == "__main__":  # `python a1jax/hugepages.py --exports`: the shell lines launch/env.sh evaluates
    import shlex
    if sys.argv[1:] != ["--exports"]:
        raise SystemExit("usage: python a1jax/hugepages.py --exports")
    for name, value in changes().items():
        print(f"export {name}={shlex.quote(value)}")
