"""Public MoE ops with backend dispatch: `gmm`, `tgmm` (ragged_dot semantics) and the routed-expert block.

Each op tries the implementations of `kernels.backend.candidates("moe", impl)` in order; a Pallas implementation that
cannot take the shapes raises NotImplementedError before tracing anything and the next one runs, ending with XLA.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp

from kernels import backend
from kernels.moe import _common, grouped
from kernels.moe.routing import gather_back, permute, permute_with, plan, route, unpermute
from kernels.reference import moe as reference


def _row_groups(group_sizes, num_rows: int):
    """[M, 1] group of each row of a ragged_dot lhs; -1 past the last group (those rows give 0, as in ragged_dot)."""
    ends = jnp.cumsum(group_sizes.astype(jnp.int32))
    g = jnp.searchsorted(ends, jnp.arange(num_rows, dtype=jnp.int32), side="right").astype(jnp.int32)
    return jnp.where(g < group_sizes.shape[0], g, -1)[:, None]


def _gmm_pallas(lhs, rhs, group_sizes, *, impl):
    M, K = lhs.shape
    E, _, N = rhs.shape
    tile = grouped.row_tile(impl, M, E, lhs.dtype)
    _common.check_dtype(impl, lhs.dtype, rhs.dtype)
    grouped.KERNELS[impl].validate(K, N, lhs.dtype, tile)
    x_sorted, layout = permute(lhs, _row_groups(group_sizes, M), E, tile=tile)
    return gather_back(grouped.gmm_aligned(x_sorted, rhs, layout, impl), layout).reshape(M, N)


def _tgmm_pallas(lhs, rhs, group_sizes, *, impl):
    M, K = lhs.shape
    N, E = rhs.shape[1], group_sizes.shape[0]
    tile = grouped.row_tile(impl, M, E, lhs.dtype)
    _common.check_dtype(impl, lhs.dtype, rhs.dtype)
    grouped.KERNELS[impl].validate(K, N, lhs.dtype, tile)
    layout = plan(_row_groups(group_sizes, M), E, tile=tile)
    return grouped.KERNELS[impl].tgmm(permute_with(lhs, layout), permute_with(rhs, layout), layout)


_GMM = {"xla": reference.gmm, **{name: functools.partial(_gmm_pallas, impl=name) for name in grouped.KERNELS}}
_TGMM = {"xla": reference.tgmm, **{name: functools.partial(_tgmm_pallas, impl=name) for name in grouped.KERNELS}}


def gmm(lhs, rhs, group_sizes, *, impl=None):
    """Grouped matmul with `jax.lax.ragged_dot` semantics: lhs [M, K] rows grouped consecutively by group_sizes [E],
    rhs [E, K, N] -> [M, N] in lhs's dtype (rows past the groups are 0). Differentiable (custom_vjp: gmm + tgmm)."""
    return backend.dispatch("moe", _GMM, impl, lhs, rhs, group_sizes)


def tgmm(lhs, rhs, group_sizes, *, impl=None):
    """The weight gradient of `gmm`: out[e] = lhs[rows of e].T @ rhs[rows of e]; [M, K], [M, N] -> [E, K, N]."""
    return backend.dispatch("moe", _TGMM, impl, lhs, rhs, group_sizes)


def _expert_rows(x, expert_ids, w_gate_up, w_down, *, impl, tile=None, expert_offset=0, expected_rows=None):
    """Permutes x by expert, runs the experts; returns the outputs in the sorted layout and the layout."""
    E, H, inter = w_gate_up.shape[0], x.shape[1], w_down.shape[1]
    tile = tile or grouped.row_tile(impl, expected_rows or expert_ids.size, E, x.dtype)
    grouped.validate(impl, H, inter, x.dtype, tile)
    w_gate_up, w_down = w_gate_up.astype(x.dtype), w_down.astype(x.dtype)
    x_sorted, layout = permute(x, expert_ids, E, tile=tile, expert_offset=expert_offset, expected_rows=expected_rows)
    return grouped.expert_mlp(x_sorted, w_gate_up, w_down, layout, impl), layout


def _routed(x, weights, expert_ids, w_gate_up, w_down, *, impl, tile=None):
    y_sorted, layout = _expert_rows(x, expert_ids, w_gate_up, w_down, impl=impl, tile=tile)
    return unpermute(y_sorted, weights, layout)


def _local(x_rows, expert_ids, w_gate_up, w_down, *, impl, tile=None, expert_offset=0, expected_rows=None):
    y_sorted, layout = _expert_rows(x_rows, expert_ids[:, None], w_gate_up, w_down, impl=impl, tile=tile,
                                    expert_offset=expert_offset, expected_rows=expected_rows)
    return gather_back(y_sorted, layout)[:, 0], layout


def _by_impl(fn):
    return {name: functools.partial(fn, impl=name) for name in ("xla", *grouped.KERNELS)}


_ROUTED, _LOCAL = _by_impl(_routed), _by_impl(_local)


def routed_ffn(x, weights, expert_ids, w_gate_up, w_down, *, impl=None, tile=None):
    """The routed SwiGLU experts for given routing: x [N, H], weights/expert_ids [N, k], w_gate_up [E, H, 2I]
    (gate columns, then up), w_down [E, I, H] -> [N, H] in x's dtype. `tile` overrides the kernel's row tile."""
    return backend.dispatch("moe", _ROUTED, impl, x, weights, expert_ids, w_gate_up, w_down, tile=tile)


def local_expert_ffn(x_rows, expert_ids, w_gate_up, w_down, *, expert_offset=0, impl=None, tile=None,
                     expected_rows=None):
    """One expert-parallel shard's work: rows x_rows [R, H], each for one global expert expert_ids [R]; the shard
    holds experts [expert_offset, expert_offset + E_local) as w_gate_up [E_local, H, 2I], w_down [E_local, I, H].

    Returns (y_rows [R, H], Layout): rows for other shards' experts (or with id -1, e.g. padding) give 0 and take no
    kernel work (megablox's group_offset). The layout tells how many tile rows the kernels ran. `expected_rows`
    (default R) is the typical number of real rows, from which the row tile is chosen when R is a worst-case buffer."""
    return backend.dispatch("moe", _LOCAL, impl, x_rows, expert_ids, w_gate_up, w_down, tile=tile,
                            expert_offset=expert_offset, expected_rows=expected_rows)


def moe_ffn(x, router_logits, w_gate_up, w_down, top_k: int, *, impl=None):
    """The whole routed-expert block: `route` (fp32 softmax, top-k, renormalise), then `routed_ffn`."""
    weights, expert_ids = route(router_logits, top_k)
    return routed_ffn(x, weights, expert_ids, w_gate_up, w_down, impl=impl)
