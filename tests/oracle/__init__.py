"""Access to the HF oracle (hf_oracle.py) from the a1jax test venv.

The oracle needs torch + transformers, which live in their own Python 3.11 venv (.venv-oracle, made by
setup_oracle.sh; A1JAX_ORACLE_PYTHON overrides the interpreter). All cases run in one subprocess per test session
(torch's import dominates); pytest-xdist workers share the output through a file lock.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "oracle", "hf_oracle.py")
MOE_CASES = ("moe_spec", "moe_wide")
CASES = MOE_CASES + ("dense", "dense_tied")
_HOW = "create it with `bash tests/oracle/setup_oracle.sh` (Python 3.11, torch 2.13.0 CPU, transformers 5.24.0)"


class OracleUnavailable(RuntimeError):
    """The oracle venv is missing; tests skip, or fail under A1JAX_REQUIRE_ORACLE=1."""


def oracle_python() -> str:
    return os.environ.get("A1JAX_ORACLE_PYTHON", os.path.join(ROOT, ".venv-oracle", "bin", "python"))


def _script_digest() -> str:
    with open(SCRIPT, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def run_oracle(case: str, cache_dir: str) -> dict[str, np.ndarray]:
    """The oracle's outputs for `case`; on first use runs every case once into cache_dir (keyed by the script's
    hash, so an edited oracle is rerun)."""
    if case not in CASES:
        raise ValueError(f"unknown oracle case {case!r}; cases: {CASES}")
    outdir = os.path.join(cache_dir, f"hf_oracle-{_script_digest()}")
    path = os.path.join(outdir, f"{case}.npz")
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first xdist worker runs the oracle; the others wait for it
        if not os.path.exists(path):
            python = oracle_python()
            if not os.path.exists(python):
                raise OracleUnavailable(f"HF oracle interpreter {python} not found; {_HOW}")
            proc = subprocess.run([python, SCRIPT, "--all", "--outdir", outdir], capture_output=True, text=True,
                                  timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"HF oracle failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    with np.load(path) as z:
        out = {k: z[k] for k in z.files}
    out["config"] = json.loads(str(out.pop("config_json")))
    out["state_dict"] = {k[3:]: out.pop(k) for k in list(out) if k.startswith("sd/")}
    return out


def load_in_transformers(dirs: list[str]) -> list[dict[str, np.ndarray]]:
    """Loads each converted HF directory (holding inputs.npz) with transformers' from_pretrained in one subprocess;
    returns its hf_outputs.npz contents."""
    python = oracle_python()
    if not os.path.exists(python):
        raise OracleUnavailable(f"HF oracle interpreter {python} not found; {_HOW}")
    cmd = [python, SCRIPT] + [arg for d in dirs for arg in ("--load", d)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"transformers could not load {dirs} (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    out = []
    for d in dirs:
        with np.load(os.path.join(d, "hf_outputs.npz")) as z:
            out.append({k: z[k] for k in z.files})
    return out
