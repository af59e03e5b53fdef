"""Pure-jnp references for the routed-expert block, with the signatures of `kernels.moe`
(docs/spec/kernels.md §3.1-3.2, §4).

Written to be obviously right rather than fast: routing by a descending argsort, the grouped matmul as
`jax.lax.ragged_dot`, its weight gradient as the rhs cotangent of that `ragged_dot`, and the whole block as a loop over
tokens that gathers each token's k expert matrices. Differentiable by plain autodiff; no Pallas, no custom_vjp.
The dtype casts sit where the model's `a1jax/model/moe.py` puts them (fp32 accumulation, activations and expert
outputs rounded to the activation dtype), so bf16 comparisons measure the kernels, not a different recipe.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def route(router_logits, top_k: int):
    """[N, E] logits -> (weights [N, k] fp32 summing to 1, expert_ids [N, k] int32) by fp32 softmax and top-k."""
    probs = jax.nn.softmax(router_logits.astype(F32), axis=-1)
    ids = jnp.argsort(-probs, axis=-1, stable=True)[:, :top_k].astype(jnp.int32)
    weights = jnp.take_along_axis(probs, ids, axis=-1)
    return weights / jnp.sum(weights, axis=-1, keepdims=True), ids


def gmm(lhs, rhs, group_sizes, *, impl=None):
    """lhs [M, K] rows grouped consecutively by group_sizes [E]; rhs [E, K, N] -> [M, N] (rows past the groups are 0).

    `impl` is accepted and ignored so that this function and `kernels.moe.gmm` are interchangeable."""
    del impl
    out = jax.lax.ragged_dot(lhs, rhs, group_sizes.astype(jnp.int32), preferred_element_type=F32)
    return out.astype(lhs.dtype)


def tgmm(lhs, rhs, group_sizes, *, impl=None):
    """The weight gradient of `gmm`: out[e] = lhs[rows of e].T @ rhs[rows of e]; lhs [M, K], rhs [M, N] -> [E, K, N]."""
    del impl
    E, K, N = group_sizes.shape[0], lhs.shape[1], rhs.shape[1]
    _, vjp = jax.vjp(lambda w: jax.lax.ragged_dot(lhs.astype(F32), w, group_sizes.astype(jnp.int32)),
                     jnp.zeros((E, K, N), F32))
    return vjp(rhs.astype(F32))[0].astype(lhs.dtype)


def moe_ffn(x, router_logits, w_gate_up, w_down, top_k: int, *, impl=None):
    """Routed SwiGLU experts: x [N, H], router_logits [N, E], w_gate_up [E, H, 2I] (gate columns, then up),
    w_down [E, I, H] -> [N, H]. One token at a time, each gathering its k experts' matrices (no sorting at all)."""
    del impl
    weights, ids = route(router_logits, top_k)
    weights = weights.astype(x.dtype)  # the model (and HF) round the routing weights to the activation dtype
    w_gate_up, w_down = w_gate_up.astype(x.dtype), w_down.astype(x.dtype)
    inter = w_down.shape[1]

    def one_token(args):
        x_t, ids_t, w_t = args  # [H], [k], [k]
        h = jnp.einsum("h,khf->kf", x_t, w_gate_up[ids_t], preferred_element_type=F32)
        act = (jax.nn.silu(h[:, :inter]) * h[:, inter:]).astype(x.dtype)
        y = jnp.einsum("ki,kih->kh", act, w_down[ids_t], preferred_element_type=F32).astype(x.dtype)
        return jnp.einsum("kh,k->h", y, w_t)

    return jax.lax.map(one_token, (x, ids, weights))
