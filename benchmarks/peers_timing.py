"""Timing helpers shared by both sides of benchmarks/peers.py: the standard library only, because the HF side
(benchmarks/peers_hf.py) runs in the oracle venv, which has neither jax nor a1jax."""
from __future__ import annotations

import os
import statistics
import sys
import time

GATE_ENV = "A1JAX_PEERS_GATE"  # "1" in a side's environment under `benchmarks.peers --interleave`
GATE_LINE = "@@peers-gate"  # what a gated side prints on stdout when it waits for the parent


def gate() -> None:
    """Under `benchmarks.peers --interleave`: tells the parent that this side is between two calls and waits until
    the parent lets it make the next one, so the sides take turns call by call and never compute at the same time.
    A no-op otherwise."""
    if os.environ.get(GATE_ENV) != "1":
        return
    sys.stdout.write(GATE_LINE + "\n")
    sys.stdout.flush()
    if not sys.stdin.readline():
        raise SystemExit("peers: the parent process closed this side's gate (stdin)")


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Wall times of `repeats` calls of fn() after one untimed call (which compiles); returns (times, last result).
    Every call passes the gate first (`gate`), outside the timed span."""
    gate()
    out = fn()
    times = []
    for _ in range(repeats):
        gate()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def row(times: list[float], tokens: int) -> dict:
    """One table row: the tokens per call, every time, the median and tokens / median."""
    med = statistics.median(times)
    return dict(tokens=tokens, seconds=times, median_s=med, tokens_per_s=tokens / med)
