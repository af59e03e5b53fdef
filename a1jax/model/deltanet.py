"""Gated DeltaNet layer (docs/spec/model.md §2.3): projections, causal depthwise conv + SiLU, gates, delta rule, norm.

Packed rows stay exact: the conv window never reaches across a segment start and the recurrent state resets there.
HF zeroes padded inputs instead; for left padding the two are identical (a zero input leaves a zero state).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from kernels.reference import gated_delta_rule as gdr
from a1jax.model.config import ModelConfig
from a1jax.model.layers import gated_rms_norm, l2_normalize
from a1jax.model.parallel import Parallel
from kernels import gdn as gdn_kernels

F32 = jnp.float32
NO_SEGMENT = -1  # segment id of empty conv-history slots: never equal to a real one


def causal_conv(x, w, segment_ids, history=None, history_seg=None):
    """Depthwise causal conv over time; `w[K-1]` multiplies the current token. x [B,T,N,d]; w [K,N,d].

    history [B,K-1,N,d] / history_seg [B,K-1] are the previous inputs (decode cache). Returns (y fp32, new history,
    new history segments).
    """
    B, T = x.shape[:2]
    K = w.shape[0]
    if history is None:
        history = jnp.zeros((B, K - 1, *x.shape[2:]), x.dtype)
        history_seg = jnp.full((B, K - 1), NO_SEGMENT, segment_ids.dtype)
    xx = jnp.concatenate([history.astype(x.dtype), x], axis=1).astype(F32)
    ss = jnp.concatenate([history_seg, segment_ids], axis=1)
    y = jnp.zeros(x.shape, F32)
    for j in range(K):  # tap j sees input t - (K-1) + j
        same = (ss[:, j:j + T] == segment_ids)[..., None, None]
        y = y + jnp.where(same, xx[:, j:j + T], 0.0) * w[j].astype(F32)
    return y, xx[:, T:].astype(x.dtype), ss[:, T:]


def _prepare_qk(q, k, rep: int, dk: int):
    """l2-normalised fp32 q (scaled by dk^-1/2) and k, repeated to the v-heads (v-head h uses qk-head h // rep)."""
    q = jnp.repeat(l2_normalize(q.astype(F32)), rep, axis=2) * (dk ** -0.5)
    return q, jnp.repeat(l2_normalize(k.astype(F32)), rep, axis=2)


def delta_rule(q, k, v, g, beta, segment_ids, initial_state, cfg: ModelConfig):
    """The recurrence on one device, by `cfg.deltanet_impl`. Returns (o, final state)."""
    if cfg.deltanet_impl == "scan":
        return gdr.gated_delta_rule_scan(q, k, v, g, beta, segment_ids=segment_ids, initial_state=initial_state)
    if cfg.deltanet_impl == "chunked":
        return gdr.gated_delta_rule_chunked(q, k, v, g, beta, segment_ids=segment_ids, initial_state=initial_state,
                                            chunk_size=cfg.deltanet_chunk_size)
    return gdn_kernels.chunk_gated_delta_rule(q, k, v, g, beta, segment_ids=segment_ids, initial_state=initial_state,
                                              chunk_size=cfg.deltanet_chunk_size, impl=cfg.deltanet_impl)


def _sharded_mixer(p, proj, g, beta, segment_ids, cfg: ModelConfig, par: Parallel, dtype):
    """conv + SiLU + the delta rule inside one shard_map over the mesh, so a Pallas kernel (a custom call, which the
    SPMD partitioner cannot split) runs on each device's own rows and heads. With a sequence axis the conv takes the
    previous shard's inputs as its halo and the recurrence runs by context-parallel state passing. Returns o."""
    axis = par.sequence_axis
    Hk, Hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
    heads = par.heads_axis(Hk, Hv)
    impl = {"chunked": "xla", "scan": "xla"}.get(cfg.deltanet_impl, cfg.deltanet_impl)

    def body(q_in, k_in, v_in, g, beta, w_q, w_k, w_v, seg):
        conv = []
        for x, w in ((q_in, w_q), (k_in, w_k), (v_in, w_v)):
            hist = hist_seg = None
            if axis is not None:
                hist, hist_seg = gdn_kernels.conv_halo(x, seg, axis_name=axis, width=w.shape[0] - 1)
            conv.append(jax.nn.silu(causal_conv(x, w, seg, hist, hist_seg)[0]).astype(dtype))
        q, k = _prepare_qk(conv[0], conv[1], Hv // Hk, cfg.linear_key_head_dim)
        if axis is None:
            return delta_rule(q, k, conv[2], g, beta, seg, None, cfg)[0]
        o, _ = gdn_kernels.context_parallel_gated_delta_rule(q, k, conv[2], g, beta, axis_name=axis, segment_ids=seg,
                                                             chunk_size=cfg.deltanet_chunk_size, impl=impl)
        return o

    act, per_head, conv_w = par.tokens(heads, None), par.tokens(heads), P(None, heads, None)
    return jax.shard_map(body, mesh=par.mesh, in_specs=(act, act, act, per_head, per_head, conv_w, conv_w, conv_w,
                                                        par.tokens()),
                         out_specs=act, check_vma=False)(
        proj("in_proj_q"), proj("in_proj_k"), proj("in_proj_v"), g, beta, p["conv_q"], p["conv_k"], p["conv_v"],
        segment_ids)


def gated_deltanet(p, x, cfg: ModelConfig, segment_ids, cache=None, cache_ctx=None,
                   parallel: Parallel | None = None):
    """x [B,T,H] (normed) -> (out [B,T,H], new_cache). cache = {conv_q, conv_k, conv_v, seg, state}. With a
    mesh in `parallel` (training, no cache) they run per device (`_sharded_mixer`), context-parallel over a sequence
    axis."""
    dtype = x.dtype
    B, T, _ = x.shape
    Hk, Hv, dk = cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim
    proj = lambda name: jnp.einsum("bth,h...->bt...", x, p[name].astype(dtype))
    z = proj("in_proj_z")  # [B,T,Hv,dv]
    beta = jax.nn.sigmoid(proj("in_proj_b"))  # [B,T,Hv], in the activation dtype as HF
    g = -jnp.exp(p["A_log"].astype(F32)) * jax.nn.softplus(proj("in_proj_a").astype(F32) + p["dt_bias"].astype(F32))
    if cache is None and parallel is not None:
        o = _sharded_mixer(p, proj, g, beta, segment_ids, cfg, parallel, dtype)
        o = gated_rms_norm(o.astype(dtype), z, p["norm"], cfg.rms_norm_eps)
        return jnp.einsum("btnd,ndh->bth", o, p["out_proj"].astype(dtype)), None
    new_cache = {} if cache is not None else None
    conv_out = {}
    for name in ("q", "k", "v"):
        hist = None if cache is None else cache[f"conv_{name}"]
        hist_seg = None if cache is None else cache["conv_segment_ids"]
        y, h, hs = causal_conv(proj(f"in_proj_{name}"), p[f"conv_{name}"], segment_ids, hist, hist_seg)
        conv_out[name] = jax.nn.silu(y).astype(dtype)
        if cache is not None:
            new_cache[f"conv_{name}"], new_cache["conv_segment_ids"] = h, hs
    q, k, v = conv_out["q"], conv_out["k"], conv_out["v"]  # [B,T,Hk,dk], [B,T,Hk,dk], [B,T,Hv,dv]
    q, k = _prepare_qk(q, k, Hv // Hk, dk)

    state = None
    if cache is not None:  # a new segment at the first token starts from a zero state
        keep = (segment_ids[:, 0] == cache_ctx["last_segment_ids"]).astype(F32)
        state = cache["state"] * keep[:, None, None, None]
    if cache is not None and T == 1:
        o, state = gdr.gated_delta_rule_scan(q, k, v, g, beta, segment_ids=segment_ids, initial_state=state)
    else:
        o, state = delta_rule(q, k, v, g, beta, segment_ids, state, cfg)
    if cache is not None:
        new_cache["state"] = state
    o = gated_rms_norm(o.astype(dtype), z, p["norm"], cfg.rms_norm_eps)
    return jnp.einsum("btnd,ndh->bth", o, p["out_proj"].astype(dtype)), new_cache
