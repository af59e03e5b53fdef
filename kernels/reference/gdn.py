"""Pure-jnp gated delta rule references with the signatures of `kernels.gdn`.

Both forms live in kernels/reference/gated_delta_rule.py (one way to do a thing): the token scan is *the* reference, the
chunked WY form is the "xla" implementation the Pallas kernels are measured against. Here they only gain the
kernel API: q, k may carry fewer heads than v (v-head h reads qk-head h // (Hv / Hk)), and the context-parallel
reference gathers the sequence and scans it whole.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.reference import gated_delta_rule as gdr


def _repeat_qk(q, k, v):
    H, Hk = v.shape[2], q.shape[2]
    if H % Hk:
        raise ValueError(f"value heads ({H}) must be a multiple of query/key heads ({Hk})")
    return jnp.repeat(q, H // Hk, axis=2), jnp.repeat(k, H // Hk, axis=2)


def chunk_gated_delta_rule(q, k, v, g, beta, *, segment_ids=None, initial_state=None, chunk_size: int = 64,
                           impl=None):
    """The token-by-token scan (chunk_size and impl are ignored). Returns (o [B,T,H,dv] fp32, final state)."""
    del chunk_size, impl
    q, k = _repeat_qk(q, k, v)
    return gdr.gated_delta_rule_scan(q, k, v, g, beta, segment_ids=segment_ids, initial_state=initial_state)


def chunked_xla(q, k, v, g, beta, *, segment_ids=None, initial_state=None, chunk_size: int = 64,
                inverse: str = "solve"):
    """The model's pure-jnp chunked form (the "xla" impl and the benchmark baseline; with inverse="doubling", the
    "xla_cpu" impl)."""
    q, k = _repeat_qk(q, k, v)
    return gdr.gated_delta_rule_chunked(q, k, v, g, beta, segment_ids=segment_ids, initial_state=initial_state,
                                        chunk_size=chunk_size, inverse=inverse)


def context_parallel_gated_delta_rule(q, k, v, g, beta, *, axis_name, segment_ids=None, initial_state=None,
                                      chunk_size: int = 64, impl=None):
    """Inside shard_map over `axis_name` (sequence sharded contiguously): all-gather the sequence, scan it, keep the
    local part of o. The final state is the global one, on every shard."""
    del impl
    T = q.shape[1]
    gather = lambda x: jax.lax.all_gather(x, axis_name, axis=1, tiled=True)
    seg = None if segment_ids is None else gather(segment_ids)
    o, s = chunk_gated_delta_rule(*(gather(a) for a in (q, k, v, g, beta)), segment_ids=seg,
                                  initial_state=initial_state, chunk_size=chunk_size)
    start = jax.lax.axis_index(axis_name) * T
    return jax.lax.dynamic_slice_in_dim(o, start, T, axis=1), s
