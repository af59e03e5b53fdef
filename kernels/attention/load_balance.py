"""Token orders that balance causal ring attention across the `sequence` axis (MaxText `reorder_causal_load_balanced`).

With a contiguous split, shard n-1 attends to every earlier shard while shard 0 attends only to itself, so the ring
waits on the slowest shard and skipped blocks save nothing. Reordering the *global* sequence before sharding fixes
that: the ring kernels mask by global positions, so attention itself is unchanged; only the caller permutes inputs
(and passes the permuted positions) and un-permutes outputs.

  * "zigzag" (dual chunk swap): 2n chunks; shard r holds chunks r and 2n-1-r, one early and one late.
  * "striped": shard r holds tokens r, r+n, r+2n, ...; balanced at token granularity (used with packed rows).
"""
from __future__ import annotations

import numpy as np

SCHEMES = ("zigzag", "striped")


def permutation(T: int, n: int, scheme: str = "zigzag") -> np.ndarray:
    """perm [T] so that `x[:, perm]` split into n contiguous shards is the balanced layout."""
    if scheme == "zigzag":
        if T % (2 * n):
            raise ValueError(f"zigzag needs the sequence length {T} to be a multiple of 2 * shards = {2 * n}")
        c = T // (2 * n)
        chunks = np.arange(T).reshape(2 * n, c)
        return np.concatenate([np.concatenate([chunks[r], chunks[2 * n - 1 - r]]) for r in range(n)])
    if scheme == "striped":
        if T % n:
            raise ValueError(f"striped needs the sequence length {T} to be a multiple of the shards {n}")
        return np.arange(T).reshape(T // n, n).T.reshape(-1)
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def reorder(x, perm, axis: int = 1):
    """Global order -> balanced order along `axis` (apply before sharding)."""
    return x.take(perm, axis=axis)


def restore(x, perm, axis: int = 1):
    """Balanced order -> global order along `axis` (apply after gathering)."""
    return x.take(np.argsort(perm), axis=axis)
