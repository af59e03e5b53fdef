"""Sparse MoE block (docs/spec/model.md §2.4): fp32 router softmax, renormalised top-k, dropless experts, shared one.

Dispatch is dropless by construction: the N*k (token, slot) rows are sorted by expert and multiplied with
`jax.lax.ragged_dot`, so each expert sees exactly its tokens and no capacity exists to overflow. A dense
all-experts einsum would cost E/k times the FLOPs and is never used.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from a1jax.model.config import ModelConfig
from a1jax.model.layers import swiglu
from a1jax.model.parallel import Parallel
from kernels import backend
from kernels import moe as moe_kernels
from kernels.moe import expert_parallel

F32 = jnp.float32


def route(router_logits, top_k: int):
    """fp32 softmax over all experts, top-k, renormalise. Returns (weights [N,k] fp32, ids [N,k] int32, probs)."""
    return moe_kernels.route(router_logits, top_k, return_probs=True)


def routed_experts(x, weights, ids, w_gate_up, w_down, impl: str = "ragged_dot"):
    """Dropless routed experts by sort + `ragged_dot`. x [N,H]; weights/ids [N,k]; w_gate_up [E,H,2I]; w_down [E,I,H].

    Any `impl` but "ragged_dot" runs `kernels.moe.routed_ffn` (Pallas grouped matmul or its XLA path). So does
    "ragged_dot" where the platform has a faster pure-XLA formulation (XLA:CPU lowers ragged_dot densely over all
    experts; kernels/moe/gmm_cpu.py multiplies only the routed rows)."""
    if impl == "ragged_dot":
        impl = {"xla": "ragged_dot"}.get(backend.xla_formulation("moe"), backend.xla_formulation("moe"))
    if impl != "ragged_dot":
        return moe_kernels.routed_ffn(x, weights, ids, w_gate_up, w_down, impl=impl)
    N, k = ids.shape
    E = w_gate_up.shape[0]
    inter = w_down.shape[1]
    flat = ids.reshape(-1)
    order = jnp.argsort(flat, stable=True)  # rows grouped by expert
    group_sizes = jnp.bincount(flat, length=E).astype(jnp.int32)
    x_sorted = jnp.take(x, order // k, axis=0)  # [N*k, H]
    h = jax.lax.ragged_dot(x_sorted, w_gate_up, group_sizes, preferred_element_type=F32)
    act = (jax.nn.silu(h[:, :inter]) * h[:, inter:]).astype(x.dtype)
    y_sorted = jax.lax.ragged_dot(act, w_down, group_sizes, preferred_element_type=F32).astype(x.dtype)
    y = jnp.take(y_sorted, jnp.argsort(order), axis=0).reshape(N, k, -1)  # back to (token, slot) order
    return jnp.einsum("nkh,nk->nh", y, weights.astype(x.dtype))


def expert_parallel_experts(x, weights, ids, w_gate_up, w_down, impl: str, par: Parallel, token_chunk: int = 0):
    """Routed experts with the experts split over `par.expert_axis`: inside one shard_map over the whole mesh, each
    shard's tokens go to their experts' shards and back (kernels.moe.expert_parallel.shard_ffn), `token_chunk`
    tokens at a time when that divides the shard's tokens. Dropless.
    x [B,T,H]; weights/ids [B,T,k]. Returns (y [B,T,H], transport stats summed over the mesh)."""
    axis = par.expert_axis
    transport = expert_parallel.resolve_transport(par.ep_transport)
    others = tuple(a for a in par.token_axes() if a != axis)

    def exchange(x, weights, ids, w_gate_up, w_down):
        return expert_parallel.shard_ffn(x, weights, ids, w_gate_up, w_down, axis=axis, num_shards=par.size(axis),
                                         transport=transport, impl=None if impl == "ragged_dot" else impl,
                                         stats_axes=others)

    def body(x, weights, ids, w_gate_up, w_down):
        b, t, h = x.shape
        n, k = b * t, ids.shape[-1]
        x, weights, ids = x.reshape(n, h), weights.reshape(n, k), ids.reshape(n, k)
        if not token_chunk or n <= token_chunk or n % token_chunk:
            y, stats = exchange(x, weights, ids, w_gate_up, w_down)
            return y.reshape(b, t, h), stats
        # bounded buffers: the tokens go through the exchange `token_chunk` at a time (every shard in step)
        split = lambda a: a.reshape(n // token_chunk, token_chunk, *a.shape[1:])
        # checkpointed: the backward pass keeps each chunk's inputs, not its worst-case exchange buffers
        chunk_fn = jax.checkpoint(lambda c: exchange(*c, w_gate_up, w_down))
        y, stats = jax.lax.map(chunk_fn, (split(x), split(weights), split(ids)))
        stats = {name: (jnp.max(v) if name.startswith("max") else jnp.sum(v)) for name, v in stats.items()}
        return y.reshape(b, t, h), stats

    tokens, experts = par.tokens(None), P(axis, None, None)
    # check_vma=False: interpreted Pallas kernels re-evaluate their body on device-varying values
    # (docs/spec/kernels.md §2).
    return jax.shard_map(body, mesh=par.mesh, in_specs=(tokens, tokens, tokens, experts, experts),
                         out_specs=(tokens, P()), check_vma=False)(x, weights, ids, w_gate_up, w_down)


def moe_block(p, x, cfg: ModelConfig, valid, parallel: Parallel | None = None):
    """x [B,T,H] -> (out [B,T,H], stats). `valid` [B,T] marks non-padding tokens for the router statistics."""
    B, T, H = x.shape
    dtype = x.dtype
    # routing stays [B, T, ...] so it keeps the batch x sequence sharding (a flattened [B*T, E] was replicated)
    router_logits = jnp.einsum("bth,he->bte", x, p["router"].astype(dtype))  # activation dtype, as HF
    weights, ids, probs = route(router_logits, cfg.num_experts_per_tok)
    weights = weights.astype(dtype).astype(F32)  # HF >= 5.6 casts the top-k weights to the logits dtype
    w_gate_up, w_down = p["experts_gate_up"].astype(dtype), p["experts_down"].astype(dtype)
    k = ids.shape[-1]
    ep_stats = {}
    if parallel is not None and parallel.expert_axis:
        out, transport = expert_parallel_experts(x, weights, ids, w_gate_up, w_down, cfg.moe_impl, parallel,
                                                 cfg.moe_token_chunk)
        ep_stats = {"ep_routed_rows": transport["routed_rows"], "ep_transported_rows": transport["transported_rows"]}
    elif parallel is not None and cfg.moe_impl not in ("ragged_dot", "xla"):
        # a Pallas grouped matmul is a custom call the SPMD partitioner cannot split: run it on each device's tokens
        tokens, whole = parallel.tokens(None), P()
        body = lambda x, w, i, wgu, wd: routed_experts(
            x.reshape(-1, H), w.reshape(-1, k), i.reshape(-1, k), wgu, wd, cfg.moe_impl).reshape(x.shape)
        out = jax.shard_map(body, mesh=parallel.mesh, in_specs=(tokens, tokens, tokens, whole, whole),
                            out_specs=tokens, check_vma=False)(x, weights, ids, w_gate_up, w_down)
    else:
        out = routed_experts(x.reshape(B * T, H), weights.reshape(B * T, k), ids.reshape(B * T, k), w_gate_up,
                             w_down, cfg.moe_impl).reshape(B, T, H)
    if "shared_gate_proj" in p:
        shared = swiglu(x, p["shared_gate_proj"].astype(dtype), p["shared_up_proj"].astype(dtype),
                        p["shared_down_proj"].astype(dtype))
        out = out + jax.nn.sigmoid(x @ p["shared_expert_gate"].astype(dtype)) * shared
    m = valid.astype(F32)
    counts = jnp.zeros((cfg.num_experts,), F32).at[ids].add(jnp.broadcast_to(m[..., None], ids.shape))
    lse = jax.nn.logsumexp(router_logits.astype(F32), axis=-1)
    stats = {
        "expert_counts": counts,  # [E] routed (token, slot) pairs per expert, padding excluded
        "router_prob_sum": jnp.sum(probs * m[..., None], axis=(0, 1)),  # [E]
        "router_z_sum": jnp.sum(jnp.square(lse) * m),  # scalar, for the optional z-loss
        "num_tokens": jnp.sum(m),
        **ep_stats,
    }
    return out, stats


def dense_mlp(p, x):
    dtype = x.dtype
    return swiglu(x, p["gate_proj"].astype(dtype), p["up_proj"].astype(dtype), p["down_proj"].astype(dtype))


def load_balancing_loss(expert_counts, router_prob_sum, num_tokens, num_experts: int):
    """Switch-style aux loss pooled over layers, transformers >= 5.6 semantics (docs/spec/model.md §4).

    expert_counts, router_prob_sum: [L, E] summed over tokens; num_tokens: [L] valid tokens per layer.
    aux = E * sum_e f_e * P_e with f_e = counts_e / (L N) (sums to k) and P_e = prob_e / (L N); k at perfect balance.
    """
    denom = jnp.maximum(jnp.sum(num_tokens), 1.0)
    f = jnp.sum(expert_counts, axis=0) / denom
    p = jnp.sum(router_prob_sum, axis=0) / denom
    return num_experts * jnp.sum(f * p)
