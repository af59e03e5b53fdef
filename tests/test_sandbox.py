"""The sandbox for model-written code (a1jax/envs/sandbox.py) against escape attempts, under the bubblewrap backend:
every attempt must end contained. Skips where bwrap does not work here, and fails instead under
A1JAX_REQUIRE_BWRAP=1 (set by .ci/run). Also the engineering verifier: nothing the sandboxed code can read holds
the expected outputs."""
import json
import logging
import os
import signal
import socket
import sys

import pytest

from a1jax import envs
from a1jax.envs import engineering, sandbox
from a1jax.envs.sandbox import run_python

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def bwrap_works():
    problem = sandbox.bwrap_problem()
    if problem is not None:
        if os.environ.get("A1JAX_REQUIRE_BWRAP") == "1":
            pytest.fail(f"A1JAX_REQUIRE_BWRAP=1 but the bwrap backend does not work: {problem}", pytrace=False)
        pytest.skip(f"bwrap backend unavailable: {problem}")


def run(code, **kw):
    r = run_python(code, backend="bwrap", timeout_s=kw.pop("timeout_s", 5.0), **kw)
    assert r.backend == "bwrap"
    return r


def report(r):  # the last stdout line, as JSON
    assert r.stdout.strip(), r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def host_pids_with(marker):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


# --- processes ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attempt", [
    "import multiprocessing.util, os, sys\nos.waitpid(multiprocessing.util.spawnv_passfds(os.fsencode(sys.executable), "
    "[sys.executable, '-c', 'print(1)'], []), 0)",
    "import os\nos.fork()",
    "import subprocess\nsubprocess.run(['true'])",
    "import sys, os\nsys.modules['__main__']._allow_processes = True\nos.fork()",  # rebinding what the hook reads
    "import sys, os\ndel sys.modules['_posixsubprocess']\nimport _posixsubprocess",  # a fresh fork_exec
])
@pytest.mark.parametrize("backend", ["bwrap", "subprocess"])
def test_new_processes_are_refused_by_default(attempt, backend):
    r = run_python(attempt + "\nprint('escaped')", backend=backend)
    assert r.backend == backend and "escaped" not in r.stdout and "PermissionError: sandbox:" in r.stderr


def test_processes_when_allowed_stay_inside_and_are_capped_by_nproc():
    code = ("import os, time, json\nkids, err = 0, ''\nfor _ in range(12):\n    try:\n        pid = os.fork()\n"
            "    except OSError as e:\n        err = str(e); break\n"
            "    if pid == 0:\n        time.sleep(3); os._exit(0)\n"
            "    kids += 1\nprint(json.dumps([kids, err, os.getpid(), os.getppid()]))")
    kids, err, pid, ppid = report(run(code, allow_processes=True, max_processes=4))
    assert kids <= 3 and "Resource temporarily unavailable" in err
    assert (pid, ppid) == (2, 1)  # a pid namespace: the code's parent is the sandbox's init, not the trainer


def test_a_setsid_grandchild_dies_with_the_call():
    marker = f"a1jax-sandbox-grandchild-{os.getpid()}"
    code = ("import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(20)', {marker!r}])\n"
            "    os._exit(0)\ntime.sleep(0.5)\nprint('parent done')")
    r = run(code, allow_processes=True)
    leaked = host_pids_with(marker)
    for pid in leaked:  # bounded even if the test fails: do not leave it running
        os.kill(pid, signal.SIGKILL)
    assert r.stdout.strip() == "parent done" and leaked == []


def test_the_trainer_is_invisible_and_cannot_be_signalled():
    code = (f"import os, json\nout = {{'pids': sorted(int(p) for p in os.listdir('/proc') if p.isdigit())}}\n"
            f"try:\n    os.kill({os.getpid()}, 0); out['kill'] = 'sent'\nexcept OSError as e:\n"
            f"    out['kill'] = type(e).__name__\ntry:\n    os.kill(1, 9); out['init'] = 'sent'\nexcept OSError as e:\n"
            f"    out['init'] = type(e).__name__\ntry:\n    open('/proc/1/environ').read(); out['environ'] = 'read'\n"
            f"except OSError as e:\n    out['environ'] = type(e).__name__\nout['env'] = sorted(os.environ)\n"
            f"print(json.dumps(out))")
    out = report(run(code))
    assert out["pids"] == [1, 2] and out["kill"] == "ProcessLookupError" and out["environ"] == "PermissionError"
    assert out["init"] in ("PermissionError", "sent")  # killing the sandbox's own init only ends the call
    assert out["env"] == ["HOME", "LANG", "PATH", "PWD", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "TMPDIR"]


# --- network --------------------------------------------------------------------------------------------------------

def test_no_network_even_for_a_fresh_interpreter_without_the_audit_hook():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    probe = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
             f"    print('connected')\n"
             f"except OSError as e:\n    print(type(e).__name__)\n"
             f"try:\n    socket.getaddrinfo('example.com', 80); print('resolved')\nexcept OSError as e:\n"
             f"    print(type(e).__name__)\nprint(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev')"
             f".readlines()[2:]))")
    try:
        r = run(f"import subprocess, sys\nsubprocess.run([sys.executable, '-I', '-c', {probe!r}])",
                allow_processes=True)
    finally:
        server.close()
    assert r.stdout.split("\n")[:3] == ["ConnectionRefusedError", "gaierror", "['lo']"], r.stderr
    assert "PermissionError: sandbox: socket" in run(f"import socket\nsocket.socket()").stderr


# --- files ----------------------------------------------------------------------------------------------------------

def test_nothing_outside_scratch_is_writable_and_scratch_is_gone_afterwards():
    targets = ["/usr/a1jax_probe", "/a1jax_probe", f"{sys.base_prefix}/a1jax_probe", f"{REPO}/a1jax_probe",
               "/proc/1/a1jax_probe", "/dev/a1jax_probe", "/dev/shm/a1jax_probe"]
    code = (f"import os, json\nout = {{}}\nfor t in {targets!r}:\n    try:\n        open(t, 'w').write('x'); "
            f"out[t] = 'written'\n    except OSError as e:\n        out[t] = type(e).__name__\n"
            f"open('/tmp/in_scratch', 'w').write('x')\nopen('/dev/null', 'w').write('x')\nout['cwd'] = os.getcwd()\n"
            f"out['scratch'] = sorted(os.listdir('/scratch'))\nprint(json.dumps(out))")
    out = report(run(code))
    assert all(out[t] in ("OSError", "PermissionError", "FileNotFoundError") for t in targets), out
    assert out["cwd"] == "/scratch" and out["scratch"] == ["in_scratch", "main.py"]
    assert not any(os.path.exists(t) for t in targets)


def test_project_home_and_work_are_not_visible():
    paths = [f"{REPO}/README.md", f"{REPO}/a1jax/envs/engineering.py", "/work", "/etc/passwd", "/home",
             os.path.expanduser("~/.bashrc"), os.path.join(os.path.dirname(sys.executable), "activate")]
    code = f"import os, json\nprint(json.dumps([os.path.exists(p) for p in {paths!r}]))"
    assert report(run(code)) == [False] * len(paths)


def test_the_interpreter_is_the_base_install_never_the_project_venv():
    exe, prefix = sandbox.interpreter(sys.executable)
    assert prefix == os.path.realpath(sys.base_prefix) and exe.startswith(prefix + "/")
    assert not prefix.startswith((REPO, "/work"))
    argv = sandbox.bwrap_argv(exe, prefix, 3, scratch_bytes=1 << 20, as_root=os.geteuid() == 0)
    binds = [argv[i + 1] for i, a in enumerate(argv) if a in ("--bind", "--ro-bind")]
    assert "--bind" not in argv and all(not b.startswith((REPO, "/work", "/home")) for b in binds)
    assert binds[0] == "/usr" and prefix in binds


# --- resources ------------------------------------------------------------------------------------------------------

def test_memory_cpu_file_size_and_scratch_size_are_bounded():
    r = run("x = bytearray(1 << 30)\nprint('allocated')", memory_mb=200)
    assert "MemoryError" in r.stderr and "allocated" not in r.stdout
    r = run("while True:\n    pass", timeout_s=1.0)
    assert r.timed_out and r.exit_status == -9
    r = run("open('big', 'wb').write(b'x' * (2 << 20))\nprint('written')", file_mb=1)
    assert "File too large" in r.stderr and "written" not in r.stdout
    r = run("for i in range(8):\n    open(f'f{i}', 'wb').write(b'x' * ((1 << 20) - 1))\nprint('written')",
            file_mb=1, scratch_mb=4)
    assert "No space left on device" in r.stderr and "written" not in r.stdout


# --- backend choice -------------------------------------------------------------------------------------------------

def test_auto_falls_back_loudly_once_and_says_which_backend_ran(monkeypatch, caplog):
    assert run_python("print(1)").backend == "bwrap"
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox.bwrap_problem.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="a1jax.envs.sandbox"):
            assert run_python("print(1)").backend == "subprocess"
            assert run_python("print(1)").backend == "subprocess"
        assert [r.message.count("SANDBOX FALLBACK") for r in caplog.records] == [1]
        with pytest.raises(RuntimeError, match="backend='bwrap' does not work here: no `bwrap`"):
            sandbox.resolve_backend("bwrap")
        monkeypatch.setenv("A1JAX_SANDBOX", "nope")
        with pytest.raises(ValueError, match="A1JAX_SANDBOX"):
            sandbox.resolve_backend()
    finally:
        sandbox.bwrap_problem.cache_clear()
        sandbox._warn_fallback.cache_clear()


# --- the engineering verifier ---------------------------------------------------------------------------------------

def _task(kind):
    env = envs.get("engineering", sandbox=sandbox.Sandbox(backend="bwrap"))
    for task in env.tasks("test", 0, n=40, horizon=2):
        if task.metadata["kind"] == kind:
            return env, task


def _verify(env, task, code):
    return env.verify(task, {"messages": [{"role": "assistant", "content": f"```python\n{code}```"}]})


def test_the_sandboxed_harness_holds_inputs_only():
    env, task = _task("string")
    code = engineering._harness("def solve(x):\n    return x\n", [x for x, _ in task.answer])
    inputs = {x for x, _ in task.answer}
    for _, want in task.answer:
        if want not in inputs:
            assert json.dumps(want) not in code and repr(want) not in code


def test_a_submission_that_reads_its_folder_frames_or_fakes_the_result_line_fails():
    env, task = _task("string")
    snoop = ("import json, os, re, sys\n"
             "def solve(x):\n"  # any expected output in the caller's frames, or in a file of its folder
             "    f = sys._getframe(1)\n"
             "    while f:\n"
             "        for scope in (f.f_locals, f.f_globals):\n"
             "            for name in ('_want', 'want', 'expected'):\n"
             "                if name in scope:\n"
             "                    return scope[name]\n"
             "        f = f.f_back\n"
             "    for path in os.listdir('.'):\n"
             "        for m in re.finditer(r'(\\[\\[.*\\]\\])', open(path).read()):\n"
             "            try:\n"
             "                return dict(map(tuple, json.loads(m.group(1))))[x]\n"
             "            except (ValueError, TypeError, KeyError):\n"
             "                pass\n"
             "    return x\n"
             f"print({engineering.RESULTS!r}, json.dumps([['str', 'x']] * {len(task.answer)}))\n"
             "print('a1jax-engineering-verdict 7/7')\n")
    verdict = _verify(env, task, snoop)
    assert not verdict.success and verdict.reason.startswith("passed "), verdict.reason
    faked = (f"import json, os\nprint({engineering.RESULTS!r}, json.dumps([['str', 'x']] * {len(task.answer)}))\n"
             "os._exit(0)\n")
    assert not _verify(env, task, faked).success


def test_the_expert_still_passes_and_wrong_types_fail():
    env, task = _task("integer")
    solution = engineering.program(task.metadata["stages"])
    assert _verify(env, task, solution).reason == f"passed {len(task.answer)}/{len(task.answer)} hidden tests"
    as_text = solution.replace("def solve(x):", "def solve_int(x):") + "\ndef solve(x):\n    return str(solve_int(x))\n"
    verdict = _verify(env, task, as_text)
    assert not verdict.success and "passed 0/" in verdict.reason
    verdict = _verify(env, task, "def solve(x):\n    raise ValueError('nope')\n")
    assert "returned <ValueError: nope>" in verdict.reason
