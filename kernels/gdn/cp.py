"""Context-parallel gated delta rule over the `sequence` mesh axis, inside shard_map (FLA fla/ops/cp;
docs/spec/kernels.md §3.3).

The state after a shard is affine in the state entering it: S_out = M S_in + S_ext, with M [dk, dk] the product of
the chunk transitions cd I - Kc^T W. So:
  1. pre-pass, per shard and in parallel: one final-state-only run on the augmented value [v | 0] from the initial
     state [0 | I] yields [S_ext | M] together (fp32; M = 0 once a segment starts inside the shard);
  2. all-gather (S_ext, M) and each shard's "continues the previous shard's last segment" flag;
  3. fp32 merge: S_{j+1} = M_j (keep_j S_j) + S_ext_j, from the global initial state; shard r takes S_r;
  4. the normal chunked forward from that state.
The backward mirrors it by composition: the chunked op's custom_vjp gives dS_in, the merge and the all-gather
transpose (a reduce-scatter) carry it to the earlier shards' (S_ext, M), and the pre-pass's custom_vjp takes it home.
Cost: the pre-pass walks dv + dk value columns without the output kernel.

`conv_halo` gives the DeltaNet conv the last inputs of the previous shard.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kernels import backend
from kernels.gdn import chunk
from kernels.gdn.intra import HIGHEST
from kernels.reference import gdn as ref

F32 = jnp.float32
NO_SEGMENT = -1  # segment id of the empty history before shard 0 (as a1jax/model/deltanet.py)


def _to_next(x, axis_name, n):
    """Shard r receives shard r-1's x; shard 0 receives zeros."""
    return jax.lax.ppermute(x, axis_name, [(i, i + 1) for i in range(n - 1)])


def _context_parallel(local, local_state, q, k, v, g, beta, segment_ids, initial_state, axis_name):
    n = jax.lax.axis_size(axis_name)
    r = jax.lax.axis_index(axis_name)
    B, T, Hk, dk = q.shape
    H, dv = v.shape[2], v.shape[3]
    if segment_ids is None:
        keep = jnp.ones((B,), F32)
    else:
        prev_last = _to_next(segment_ids[:, -1], axis_name, n)
        keep = jnp.where(r == 0, True, segment_ids[:, 0] == prev_last).astype(F32)

    v_aug = jnp.concatenate([v.astype(F32), jnp.zeros((B, T, H, dk), F32)], axis=-1)
    eye = jnp.broadcast_to(jnp.eye(dk, dtype=F32), (B, H, dk, dk))
    s_aug = local_state(q, k, v_aug, g, beta, segment_ids, jnp.concatenate([jnp.zeros((B, H, dk, dv), F32), eye], -1))

    gather = lambda x: jax.lax.all_gather(x, axis_name)
    s_ext, m, keeps = gather(s_aug[..., :dv]), gather(s_aug[..., dv:]), gather(keep)
    s = jnp.zeros((B, H, dk, dv), F32) if initial_state is None else initial_state.astype(F32)
    entering = []
    for j in range(n):
        entering.append(s)
        s = jnp.einsum("bhkl,bhlv->bhkv", m[j], keeps[j][:, None, None, None] * s, precision=HIGHEST) + s_ext[j]
    s_in = jnp.stack(entering)[r] * keep[:, None, None, None]
    o, _ = local(q, k, v, g, beta, segment_ids, s_in)
    return o, s


def context_parallel_gated_delta_rule(q, k, v, g, beta, *, axis_name, segment_ids=None, initial_state=None,
                                      chunk_size: int = 64, impl=None, block_v=None, interpret=None):
    """`chunk_gated_delta_rule` on a sequence sharded contiguously over `axis_name`; call inside shard_map.

    Arguments are this shard's tokens; `initial_state` is the state before the *global* first token. A shard's first
    token continues the previous shard's last segment when their ids match. Returns (local o fp32, the global final
    state on every shard). impl as for `chunk_gated_delta_rule`; "xla" runs the same algorithm on the pure-jnp
    chunked form."""
    args = (q, k, v, g, beta, segment_ids, initial_state, axis_name)

    def xla():
        local = lambda q, k, v, g, beta, seg, s0: ref.chunked_xla(q, k, v, g, beta, segment_ids=seg,
                                                                  initial_state=s0, chunk_size=chunk_size)
        return _context_parallel(local, lambda *a: local(*a)[1], *args)

    def pallas(name):
        cfg = chunk.make_config(name, chunk_size, block_v, interpret)
        local_state = lambda *a: chunk.apply(*a, dataclasses.replace(cfg, with_output=False))
        return _context_parallel(lambda *a: chunk.apply(*a, cfg), local_state, *args)

    table = {"pallas_tpu": lambda: pallas("pallas_tpu"), "pallas_gpu": lambda: pallas("pallas_gpu"), "xla": xla}
    return backend.dispatch("gdn", table, impl)


def conv_halo(x, segment_ids, *, axis_name, width: int):
    """(history [B, width, ...], history segment ids [B, width]) for a causal conv of kernel width + 1 on shard r:
    shard r-1's last `width` inputs; shard 0 gets zeros with NO_SEGMENT, which matches no real segment. Feed them
    to a1jax/model/deltanet.causal_conv as `history`, `history_seg`."""
    n = jax.lax.axis_size(axis_name)
    if x.shape[1] < width:
        raise ValueError(f"each shard needs at least {width} tokens for the conv halo, got {x.shape[1]}")
    hist = _to_next(x[:, -width:], axis_name, n)
    hist_seg = _to_next(segment_ids[:, -width:], axis_name, n)
    return hist, jnp.where(jax.lax.axis_index(axis_name) == 0, NO_SEGMENT, hist_seg)
