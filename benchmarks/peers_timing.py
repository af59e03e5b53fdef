"""Timing helpers shared by both sides of benchmarks/peers.py: the standard library only, because the HF side
(benchmarks/peers_hf.py) runs in the oracle venv, which has neither jax nor a1jax."""
from __future__ import annotations

import statistics
import time


def timed(fn, repeats: int) -> tuple[list[float], object]:
    """Wall times of `repeats` calls of fn() after one untimed call (which compiles); returns (times, last result)."""
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def row(times: list[float], tokens: int) -> dict:
    """One table row: the tokens per call, every time, the median and tokens / median."""
    med = statistics.median(times)
    return dict(tokens=tokens, seconds=times, median_s=med, tokens_per_s=tokens / med)
