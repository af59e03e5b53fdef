"""Routing and the dropless, tile-aligned token permutation (docs/spec/kernels.md §3.2).

`route` is the model's router (the model calls it). `permute` sorts the N*k (token, slot) rows by expert into a buffer
where each expert's segment is padded to a multiple of the row tile `tile`, so every tile of `tile` rows belongs to
exactly one expert: the grouped matmul needs no masking and no tile is visited twice, and the tile -> expert map is
all the kernel needs. `unpermute` gathers the rows back and combines them with the routing weights.

Both directions move rows with `gather_rows`, whose backward pass is again a gather (by the inverse permutation)
instead of the scatter-add that autodiff of a gather would emit: scatter-add serialises on GPU and is slow on TPU.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

F32 = jnp.float32


def route(router_logits, top_k: int, *, return_probs: bool = False):
    """fp32 softmax over all experts, top-k, renormalise (Qwen3.5 `norm_topk_prob`).

    [N, E] logits -> (weights [N, k] fp32, expert_ids [N, k] int32), plus the full probabilities [N, E] when
    `return_probs` (the model's load-balancing statistics need them)."""
    probs = jax.nn.softmax(router_logits.astype(F32), axis=-1)
    weights, ids = jax.lax.top_k(probs, top_k)
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    if return_probs:
        return weights, ids.astype(jnp.int32), probs
    return weights, ids.astype(jnp.int32)


@jax.custom_vjp
def gather_rows(x, idx, inv):
    """out[p] = x[idx[p]], or 0 where idx[p] is out of range.

    inv [rows(x), m] lists every p with idx[p] == r (out-of-range entries are padding). The backward pass is then the
    gather dx[r] = sum_j g[inv[r, j]], accumulated in fp32."""
    return jnp.take(x, idx, axis=0, mode="fill", fill_value=0)


def _gather_rows_fwd(x, idx, inv):
    return gather_rows(x, idx, inv), (idx, inv)


def _gather_rows_bwd(res, g):
    idx, inv = res
    dx = jnp.take(g, inv, axis=0, mode="fill", fill_value=0)  # [rows(x), m, ...]
    return jnp.sum(dx, axis=1, dtype=F32).astype(g.dtype), None, None


gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["src", "pos", "group_sizes", "tile_expert", "num_active_tiles", "expert_tile_start"],
                   meta_fields=["expected_rows"])
@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every routed row sits in the tile-aligned buffer; all int32, built once per layer by `plan`.

    src [cap]: the flat (token*k + slot) index held by each buffer row; N*k on padding rows.
    pos [N, k]: the buffer row of each (token, slot); cap when its expert is not in this layout's expert range.
    group_sizes [E]: routed rows per expert (without padding).
    tile_expert [cap // tile]: expert of each row tile. Tiles past the last used one repeat the last used expert, so
        a TPU pipeline that skips them re-uses the weight block already in VMEM.
    num_active_tiles [1]: tiles that hold rows; the kernels write zeros to the others.
    expert_tile_start [E + 1]: first tile of each expert; expert e owns tiles [start[e], start[e+1]).
    expected_rows (static int): the real rows the layout holds in a balanced step (all N*k rows, or on an
        expert-parallel shard the rows it receives on average), from which the kernels' cost estimates count
        the tiles they run (`expected_tile_rows`), not the buffer's worst-case capacity.
    """

    src: jax.Array
    pos: jax.Array
    group_sizes: jax.Array
    tile_expert: jax.Array
    num_active_tiles: jax.Array
    expert_tile_start: jax.Array
    expected_rows: int = 0

    @property
    def tile(self) -> int:
        return self.src.shape[0] // self.tile_expert.shape[0]

    @property
    def num_experts(self) -> int:
        return self.group_sizes.shape[0]


def expected_tile_rows(layout: Layout) -> int:
    """Rows of the row tiles the kernels run in a balanced step: the expected real rows, plus on average half a tile
    of padding per expert holding rows, at most the buffer. Cost estimates count these; the kernels skip the rest."""
    cap, tile, E = layout.src.shape[0], layout.tile, layout.num_experts
    rows = layout.expected_rows or cap
    padding = min(E, rows) * (tile - 1) // 2
    return min(cap, -(-(rows + padding) // tile) * tile)


def capacity(num_rows: int, num_experts: int, tile: int) -> int:
    """Static buffer rows that hold `num_rows` rows in any split over `num_experts` tile-padded segments."""
    worst = num_rows + min(num_experts, num_rows) * (tile - 1)
    return max(tile, -(-worst // tile) * tile)


def plan(expert_ids, num_experts: int, *, tile: int = 1, expert_offset=0, expected_rows=None) -> Layout:
    """Sorts the (token, slot) rows of expert_ids [N, k] by expert into the tile-aligned layout.

    Only experts [expert_offset, expert_offset + num_experts) are laid out (megablox's `group_offset`): on an
    expert-parallel shard, rows for other shards' experts take no buffer space and come back from `unpermute` as 0.
    `expert_offset` may be traced (e.g. `axis_index * num_local_experts`). `expected_rows` (default N*k): how many of
    the rows are real in a balanced step, e.g. the rows an expert-parallel shard receives of its worst-case buffer."""
    N, k = expert_ids.shape
    R, E = N * k, num_experts
    cap = capacity(R, E, tile)
    flat = expert_ids.reshape(R).astype(jnp.int32) - jnp.asarray(expert_offset, jnp.int32)
    key = jnp.where((flat >= 0) & (flat < E), flat, E)  # E = "not here", sorts last
    order = jnp.argsort(key, stable=True)
    group_sizes = jnp.bincount(key, length=E + 1)[:E].astype(jnp.int32)
    padded = -(-group_sizes // tile) * tile
    padded_end = jnp.cumsum(padded)
    padded_start = padded_end - padded
    start = jnp.cumsum(group_sizes) - group_sizes
    sorted_key = key[order]
    e = jnp.minimum(sorted_key, E - 1)
    dest = jnp.where(sorted_key < E, padded_start[e] + jnp.arange(R, dtype=jnp.int32) - start[e], cap)
    pos = jnp.zeros((R,), jnp.int32).at[order].set(dest, unique_indices=True).reshape(N, k)
    src = jnp.full((cap,), R, jnp.int32).at[dest].set(order.astype(jnp.int32), mode="drop")

    num_tiles = cap // tile
    num_active = padded_end[-1] // tile
    tile_expert = jnp.searchsorted(padded_end, jnp.arange(num_tiles, dtype=jnp.int32) * tile, side="right")
    tile_expert = jnp.minimum(tile_expert, E - 1).astype(jnp.int32)
    last_used = tile_expert[jnp.maximum(num_active - 1, 0)]
    tile_expert = jnp.where(jnp.arange(num_tiles) < num_active, tile_expert, last_used)
    expert_tile_start = jnp.concatenate([jnp.zeros((1,), jnp.int32), padded_end // tile]).astype(jnp.int32)
    return Layout(src, pos, group_sizes, tile_expert, num_active.reshape(1).astype(jnp.int32), expert_tile_start,
                  int(min(expected_rows or R, R)))


def permute(x, expert_ids, num_experts: int, *, tile: int = 1, expert_offset=0, expected_rows=None):
    """x [N, H], expert_ids [N, k] -> (x_sorted [cap, H] with zero padding rows, Layout). See `plan`."""
    layout = plan(expert_ids, num_experts, tile=tile, expert_offset=expert_offset, expected_rows=expected_rows)
    return permute_with(x, layout), layout


def permute_with(x, layout: Layout):
    """Lays x [N, H] out as `layout` says: row p of the result is x[token of src[p]] (0 on padding rows)."""
    N, k = layout.pos.shape
    token = jnp.where(layout.src < N * k, layout.src // k, N)
    return gather_rows(x, token, layout.pos)


def gather_back(y_sorted, layout: Layout):
    """y_sorted [cap, H] -> [N, k, H] in (token, slot) order; rows whose expert is not in the layout are 0."""
    N, k = layout.pos.shape
    rows = gather_rows(y_sorted, layout.pos.reshape(N * k), layout.src[:, None])
    return rows.reshape(N, k, *y_sorted.shape[1:])


def unpermute(y_sorted, weights, layout: Layout):
    """Gathers the expert outputs back to tokens and combines them: [cap, H], weights [N, k] -> [N, H].

    The combination runs in the activation dtype, as the model's and HF's do."""
    return jnp.einsum("nkh,nk->nh", gather_back(y_sorted, layout), weights.astype(y_sorted.dtype))
