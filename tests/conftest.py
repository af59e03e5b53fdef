"""Test set-up: CPU only, 8 virtual devices for sharding tests, a persistent compilation cache; helpers for runs a
test starts as processes of their own (their environment, a SIGKILL after a checkpoint)."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

_CACHE = os.environ.get("A1JAX_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache", "jax"))
jax.config.update("jax_compilation_cache_dir", os.path.abspath(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def subprocess_env(**extra) -> dict:
    """The environment of a one-process CLI run a test starts: CPU, one device, and the tests' persistent compilation
    cache (a test's second and third run reuse the first one's executables). Not for multi-process runs: see
    test_launch.py."""
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", JAX_COMPILATION_CACHE_DIR=os.path.abspath(_CACHE),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1", **extra)


def sigkill_after_checkpoint(cmd, workdir, step: int, **popen):
    """Runs `cmd` (a run in `workdir`) and kills it with SIGKILL once its checkpoint `step` exists (orbax renames a
    finished save into place: the directory is a whole checkpoint), so mid-way through the steps after it. A later
    checkpoint it got to before the kill is removed: the resume starts from `step` whatever the timing. Fails, with
    the run's stderr, unless the SIGKILL is what ended it."""
    checkpoints = workdir / "checkpoints"
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, **popen)
        deadline = time.time() + 600
        while not (checkpoints / str(step)).is_dir() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # a no-op if it already exited
        proc.wait()
        err.seek(0)
        assert proc.returncode == -signal.SIGKILL and (checkpoints / str(step)).is_dir(), \
            (proc.returncode, err.read()[-3000:].decode(errors="replace"))
    for later in checkpoints.iterdir():
        if later.name.isdigit() and int(later.name) > step:
            shutil.rmtree(later)
