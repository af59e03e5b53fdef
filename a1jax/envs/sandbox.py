"""Run untrusted Python (the `python` tool and the hidden tests of the engineering domain) with limits.

Two backends; `run_python(backend=...)` / `Sandbox(backend=...)` choose, the default "auto" (or $A1JAX_SANDBOX) takes
"bwrap" where it works and otherwise falls back to "subprocess" with a warning logged once. Every SandboxResult
says which backend ran (`result.backend`).

"bwrap" (bubblewrap, the isolation boundary; `apt-get install bubblewrap`):
- new pid, network, ipc, uts and cgroup namespaces (and a user namespace when not run as root): the code sees only
  its own processes (not its parent), has no network but a loopback of its own, and everything it starts dies with
  it: when the call returns, the namespace's init exits and the kernel kills whatever is left (setsid included);
- a file system of its own: a size-limited tmpfs scratch at /scratch (the working directory, also /tmp and HOME)
  holding main.py, and read-only binds of only /usr (with /bin, /lib, /lib64 links) and the interpreter's install
  prefix (sys.base_prefix, e.g. pyenv's; never the virtual environment, the project, /work or a home folder);
  the rest of the root is an empty read-only tmpfs (and /dev a read-only one with null, zero, urandom, ...): no
  /etc, no project files, nothing to write outside /scratch;
- an empty environment (--clearenv) but PATH, LANG, HOME, TMPDIR and PYTHONHASHSEED; --new-session,
  --die-with-parent;
- a user of its own: run as root, bwrap keeps only CAP_SETUID/CAP_SETGID and the prelude drops to a fresh uid per
  call (no capabilities, no_new_privs), so RLIMIT_NPROC counts this call's processes only (it is not enforced for
  root) and the code cannot signal other sandboxes; run as another user, a user namespace maps it.
"subprocess" (best effort, the fallback): `python -I -S` in a host scratch directory in its own session, with the
audit hook below as its only guard; it cannot hide the file system, /proc or the network. Use it only for trusted
code or inside a container or VM without a network.

Both backends, before the user's code: RLIMIT_AS (memory; a large allocation raises MemoryError), RLIMIT_CPU,
RLIMIT_FSIZE (bytes per written file, stdout and stderr included), RLIMIT_CORE = 0 and, under bwrap only,
RLIMIT_NPROC (soft = hard, so the code cannot raise them); `python -I -S` (the standard library only); a Python
audit hook (PEP 578) that refuses sockets, ctypes and, unless allow_processes, new processes (a convenience that
keeps calls single-process; under bwrap the namespaces are the boundary); the wall time: the whole process group is
killed at `timeout_s`; stdout and stderr come back truncated to `max_output` characters each.
"""
from __future__ import annotations

import functools
import logging
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import NamedTuple

log = logging.getLogger(__name__)

BACKENDS = ("auto", "bwrap", "subprocess")
SCRATCH = "/scratch"  # the working directory inside bwrap
_UID_RANGE = (1 << 20, 1 << 30)  # the per-call uids used when running as root (no file on the host owns them)

_PRELUDE = r'''
import os, resource, sys
for _limit, _value in {limits}:
    resource.setrlimit(_limit, (_value, _value))
{drop}import subprocess as _subprocess, _posixsubprocess as _psp
def _hook(event, args, _allow_processes={allow_processes},
          _blocked=("socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
                    "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
                    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata"),
          _process=("subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork",
                    "os.forkpty", "pty.spawn"),
          _modules=("ctypes", "_ctypes", "_posixsubprocess")):
    # constants are bound as defaults, not read from module globals the user's code could rebind
    if event in _blocked or (event == "import" and args[0] in _modules):
        raise PermissionError(f"sandbox: {{event}} {{args[0] if event == 'import' else ''}} is blocked "
                              f"(no network, no ctypes, no re-import of _posixsubprocess)")
    if not _allow_processes and event in _process:
        raise PermissionError(f"sandbox: {{event}} is blocked (no new processes)")
if not {allow_processes}:
    def _no_fork_exec(*args, **kwargs):
        raise PermissionError("sandbox: _posixsubprocess.fork_exec is blocked (no new processes)")
    _psp.fork_exec = _no_fork_exec  # multiprocessing.util.spawnv_passfds calls it without an audit event
    del _no_fork_exec
sys.addaudithook(_hook)
del _hook, _subprocess, _psp, _limit, _value
sys.argv = ["main.py"]
with open("main.py") as _f:
    _code = compile(_f.read(), "main.py", "exec")
del _f
exec(_code, {{"__name__": "__main__", "__builtins__": __builtins__}})
'''


class SandboxResult(NamedTuple):
    stdout: str
    stderr: str
    exit_status: int  # the child's exit code; -N when killed by signal N (e.g. -9 after a timeout)
    timed_out: bool
    backend: str = "custom"  # "bwrap", "subprocess", or "custom" for an executor other than run_python


def _read_truncated(path: str, limit: int) -> str:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        text = f.read(limit * 4).decode("utf-8", errors="replace")
    if len(text) <= limit and size <= limit * 4:
        return text
    return text[:limit] + f"\n... [output truncated: {size} bytes in all]"


def _limits(memory_bytes: int, cpu_s: int, file_bytes: int, processes: int | None) -> list[tuple[int, int]]:
    """Set by the prelude before the user's code (soft = hard, so the code cannot raise them again). Not in a
    preexec_fn: that forces fork() of this (possibly large) process instead of vfork, doubling the cost of a call.
    RLIMIT_NPROC counts every process of the uid (of the user namespace), so only bwrap, which gives the call a uid
    or a namespace of its own, sets it (`processes` None: not set)."""
    limits = [(resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_FSIZE, file_bytes),
              (resource.RLIMIT_CORE, 0)]
    return limits + ([(resource.RLIMIT_NPROC, processes)] if processes is not None else [])


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def interpreter(python: str = sys.executable) -> tuple[str, str]:
    """(the real interpreter binary, its install prefix) for `python`, which may be a virtual environment's link:
    bwrap binds the prefix read-only so the standard library is found, and never the venv (or the project)."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        exe, prefix = getattr(sys, "_base_executable", sys.executable), sys.base_prefix
    else:
        exe = python
        prefix = os.path.dirname(os.path.dirname(os.path.realpath(python)))
    exe, prefix = os.path.realpath(exe), os.path.realpath(prefix)
    if prefix == "/" or not exe.startswith(prefix + os.sep):
        raise ValueError(f"sandbox: python={python!r} resolves to {exe!r}, not inside an install prefix "
                         f"(expected <prefix>/bin/python; got prefix {prefix!r})")
    return exe, prefix


def _parents(path: str) -> list[str]:
    """'/a/b/c' -> ['/', '/a', '/a/b']."""
    parts = path.strip("/").split("/")[:-1]
    return ["/"] + ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def bwrap_argv(exe: str, prefix: str, code_fd: int, *, scratch_bytes: int, as_root: bool) -> list[str]:
    """The bubblewrap command line around `exe` (see the module docstring); main.py is copied from `code_fd`."""
    argv = [shutil.which("bwrap") or "bwrap"]
    if as_root:  # no user namespace: bwrap keeps only what the prelude needs to switch to the call's own uid
        argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-all"]
    argv += ["--die-with-parent", "--new-session", "--clearenv"]
    for name, value in (("PATH", "/usr/bin:/bin"), ("LANG", "C.UTF-8"), ("HOME", SCRATCH), ("TMPDIR", SCRATCH),
                        ("PYTHONHASHSEED", "0"), ("PYTHONDONTWRITEBYTECODE", "1")):
        argv += ["--setenv", name, value]
    argv += ["--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib32", "lib64", "sbin"):
        target = os.path.realpath(f"/{link}")
        if os.path.islink(f"/{link}") and target.startswith("/usr/"):
            argv += ["--symlink", target, f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            argv += ["--ro-bind", f"/{link}", f"/{link}"]
    if not prefix.startswith("/usr/"):
        # its parents searchable by the call's uid (bwrap would copy the mode of /root, 0700)
        parents = [d for d in _parents(prefix) if d != "/"]
        argv += [a for d in parents for a in ("--perms", "0755", "--dir", d)] + ["--ro-bind", prefix, prefix]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(scratch_bytes), "--tmpfs", SCRATCH,
             "--perms", "0644", "--file", str(code_fd), f"{SCRATCH}/main.py",
             "--symlink", SCRATCH, "/tmp", "--chdir", SCRATCH, "--remount-ro", "/dev", "--remount-ro", "/"]
    return argv + [exe]


@functools.cache
def bwrap_problem(python: str = sys.executable) -> str | None:
    """None if the bwrap backend runs `python` here, else why not (no bwrap binary, no namespaces, ...)."""
    if shutil.which("bwrap") is None:
        return "no `bwrap` on PATH (apt-get install bubblewrap)"
    try:
        r = _execute("print('ok')", "bwrap", python=python, timeout_s=20.0, memory_mb=512, max_output=10_000, stdin="",
                     allow_processes=False, max_processes=16, file_mb=16, scratch_mb=64)
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    if r.stdout.strip() != "ok":
        return f"probe exited {r.exit_status}: {(r.stderr or r.stdout).strip()[-300:]}"
    return None


def resolve_backend(backend: str = "auto", python: str = sys.executable) -> str:
    """The backend `backend` means here: "auto" (or $A1JAX_SANDBOX when it is set) is "bwrap" where bwrap works,
    else "subprocess" with a warning logged once; "bwrap" where it does not work is an error."""
    if backend == "auto":
        backend = os.environ.get("A1JAX_SANDBOX", "auto") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"sandbox: backend={backend!r} (or $A1JAX_SANDBOX); expected one of {BACKENDS}")
    if backend == "subprocess":
        return backend
    problem = bwrap_problem(python)
    if problem is None:
        return "bwrap"
    if backend == "bwrap":
        raise RuntimeError(f"sandbox: backend='bwrap' does not work here: {problem}")
    _warn_fallback(problem)
    return "subprocess"


@functools.cache
def _warn_fallback(problem: str) -> None:
    log.warning("SANDBOX FALLBACK: model-written code runs with the best-effort 'subprocess' backend, which does "
                "not hide the file system, /proc or the network (%s). Install bubblewrap, or set "
                "A1JAX_SANDBOX=subprocess to choose this knowingly.", problem)
    print(f"a1jax WARNING: sandbox falls back to the best-effort 'subprocess' backend: {problem}", file=sys.stderr)


def run_python(code: str, *, timeout_s: float = 10.0, memory_mb: int = 512, max_output: int = 10_000,
               stdin: str = "", allow_processes: bool = False, max_processes: int = 16,
               file_mb: int = 16, scratch_mb: int = 64, backend: str = "auto",
               python: str = sys.executable) -> SandboxResult:
    """Runs `code` as the main module of a fresh `python -I -S`; see the module docstring."""
    return _execute(code, resolve_backend(backend, python), python=python, timeout_s=timeout_s, memory_mb=memory_mb,
                    max_output=max_output, stdin=stdin, allow_processes=allow_processes,
                    max_processes=max_processes, file_mb=file_mb, scratch_mb=scratch_mb)


def _execute(code: str, backend: str, *, python: str, timeout_s: float, memory_mb: int, max_output: int, stdin: str,
             allow_processes: bool, max_processes: int, file_mb: int, scratch_mb: int) -> SandboxResult:
    host = tempfile.mkdtemp(prefix="a1jax_sandbox_")  # bwrap: only stdout/stderr/main.py, not visible inside
    try:
        code_path = os.path.join(host, "main.py")
        with open(code_path, "w") as f:
            f.write(code)
        out_path, err_path = os.path.join(host, ".stdout"), os.path.join(host, ".stderr")
        as_root = os.geteuid() == 0
        drop_to = secrets.randbelow(_UID_RANGE[1] - _UID_RANGE[0]) + _UID_RANGE[0] \
            if backend == "bwrap" and as_root else None
        drop = "" if drop_to is None else (  # bwrap as root: leave root (and every capability) for this call's uid
            f"os.setgroups([])\nos.setresgid({drop_to}, {drop_to}, {drop_to})\n"
            f"os.setresuid({drop_to}, {drop_to}, {drop_to})\n")
        prelude = _PRELUDE.format(allow_processes=bool(allow_processes), drop=drop,
                                  limits=_limits(memory_mb << 20, int(timeout_s) + 1, file_mb << 20,
                                                 max_processes if backend == "bwrap" else None))
        with open(out_path, "wb") as out, open(err_path, "wb") as err, open(code_path, "rb") as code_file:
            if backend == "bwrap":
                exe, prefix = interpreter(python)
                argv = bwrap_argv(exe, prefix, code_file.fileno(), scratch_bytes=scratch_mb << 20, as_root=as_root)
                kwargs = {"env": {}, "cwd": "/", "pass_fds": (code_file.fileno(),)}
            else:
                argv = [python]
                kwargs = {"cwd": host, "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
                                               "HOME": host, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}}
            proc = subprocess.Popen(argv + ["-I", "-S", "-c", prelude], stdout=out, stderr=err,
                                    stdin=subprocess.PIPE, start_new_session=True, **kwargs)
            timed_out = False
            try:
                proc.communicate(stdin.encode(), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)  # the session id is the child's pid (start_new_session)
                proc.wait()
        return SandboxResult(_read_truncated(out_path, max_output), _read_truncated(err_path, max_output),
                             proc.returncode, timed_out, backend)
    finally:
        shutil.rmtree(host, ignore_errors=True)


class Sandbox:
    """The default code executor of the engineering domain. Anything with `run(code) -> SandboxResult` plugs in
    instead (e.g. a client of a remote container service)."""

    def __init__(self, *, timeout_s: float = 10.0, memory_mb: int = 512, max_output: int = 10_000,
                 backend: str = "auto"):
        self.timeout_s, self.memory_mb, self.max_output, self.backend = timeout_s, memory_mb, max_output, backend

    def run(self, code: str) -> SandboxResult:
        return run_python(code, timeout_s=self.timeout_s, memory_mb=self.memory_mb, max_output=self.max_output,
                          backend=self.backend)
