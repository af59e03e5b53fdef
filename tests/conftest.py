"""Test set-up: CPU only, 8 virtual devices for sharding tests, a persistent compilation cache."""
import os

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
