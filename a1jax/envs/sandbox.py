"""Run untrusted Python in a subprocess with limits: the `python` tool of the engineering domain.

What is enforced:
- a fresh scratch directory as the working directory, always removed afterwards (even on timeout);
- wall time: the child runs in its own session (process group); on timeout the whole group gets SIGKILL, and the
  group is killed after a normal exit too, so nothing it started outlives the call;
- memory: RLIMIT_AS (address space), set in the child before the user's code runs, so a large allocation raises
  MemoryError; also RLIMIT_CPU (a backstop), RLIMIT_FSIZE (bytes per written file, stdout and stderr included) and
  RLIMIT_CORE = 0;
- isolation from this environment: `python -I -S` (no PYTHONPATH, no user or site-packages: the standard library
  only), an empty environment except PATH, LANG and HOME pointing at the scratch directory;
- output: stdout and stderr are read back truncated to `max_output` characters each.

What is best effort (a Python audit hook installed before the user's code, PEP 578):
- no network: creating a socket (`socket.__new__`), name resolution and connect/bind/send raise PermissionError;
- no new processes (unless allow_processes): subprocess, os.system, os.exec*, os.spawn*, os.posix_spawn, os.fork;
- no ctypes (which could call libc's socket() directly).
Audit hooks cannot be removed from Python, but they are not a security boundary: native code loaded some other way
escapes them, and the file system outside the scratch directory is readable and writable with this user's rights.
For hostile code, run the whole rollout worker in a container or VM without a network (e.g. a network namespace).
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import NamedTuple

_PRELUDE = r'''
import resource, sys
for _limit, _value in {limits}:
    resource.setrlimit(_limit, (_value, _value))
_BLOCKED = ("socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
            "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
            "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata")
_PROCESS = ("subprocess.Popen", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
            "pty.spawn")
_allow_processes = {allow_processes}
def _hook(event, args):
    if event in _BLOCKED or (event == "import" and args[0] in ("ctypes", "_ctypes")):
        raise PermissionError(f"sandbox: {{event}} is blocked (no network, no ctypes)")
    if not _allow_processes and event in _PROCESS:
        raise PermissionError(f"sandbox: {{event}} is blocked (no new processes)")
sys.addaudithook(_hook)
del _hook
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


def _read_truncated(path: str, limit: int) -> str:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        text = f.read(limit * 4).decode("utf-8", errors="replace")
    if len(text) <= limit and size <= limit * 4:
        return text
    return text[:limit] + f"\n... [output truncated: {size} bytes in all]"


def _limits(memory_bytes: int, cpu_s: int, file_bytes: int) -> list[tuple[int, int]]:
    """Set by the prelude before the user's code (soft = hard, so the code cannot raise them again). Not in a
    preexec_fn: that forces fork() of this (possibly large) process instead of vfork, doubling the cost of a call."""
    return [(resource.RLIMIT_AS, memory_bytes), (resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_FSIZE, file_bytes),
            (resource.RLIMIT_CORE, 0)]


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(code: str, *, timeout_s: float = 10.0, memory_mb: int = 512, max_output: int = 10_000,
               stdin: str = "", allow_processes: bool = False, python: str = sys.executable) -> SandboxResult:
    """Runs `code` as the main module of a fresh `python -I -S` in a scratch directory; see the module docstring."""
    scratch = tempfile.mkdtemp(prefix="a1jax_sandbox_")
    try:
        with open(os.path.join(scratch, "main.py"), "w") as f:
            f.write(code)
        out_path, err_path = os.path.join(scratch, ".stdout"), os.path.join(scratch, ".stderr")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": scratch,
               "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        prelude = _PRELUDE.format(allow_processes=bool(allow_processes),
                                  limits=_limits(memory_mb << 20, int(timeout_s) + 1, 16 << 20))
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen([python, "-I", "-S", "-c", prelude], cwd=scratch, env=env, stdout=out,
                                    stderr=err, stdin=subprocess.PIPE, start_new_session=True)
            timed_out = False
            try:
                proc.communicate(stdin.encode(), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)  # the session id is the child's pid (start_new_session)
                proc.wait()
        return SandboxResult(_read_truncated(out_path, max_output), _read_truncated(err_path, max_output),
                             proc.returncode, timed_out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class Sandbox:
    """The default code executor of the engineering domain. Anything with `run(code) -> SandboxResult` plugs in
    instead (e.g. a client of a remote container service)."""

    def __init__(self, *, timeout_s: float = 10.0, memory_mb: int = 512, max_output: int = 10_000):
        self.timeout_s, self.memory_mb, self.max_output = timeout_s, memory_mb, max_output

    def run(self, code: str) -> SandboxResult:
        return run_python(code, timeout_s=self.timeout_s, memory_mb=self.memory_mb, max_output=self.max_output)
