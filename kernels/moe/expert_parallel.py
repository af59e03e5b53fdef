"""Expert-parallel routed experts: tokens and experts are both sharded over one mesh axis; every (token, slot) row
travels to the shard holding its expert, runs through that shard's local experts (`local_expert_ffn`: the grouped
matmul kernels with megablox's group_offset), and travels back (docs/spec/kernels.md §2, §3.2).

Two transports, both dropless:
- "ragged" (GPU/TPU): `jax.lax.ragged_all_to_all` moves exactly the routed rows. XLA:CPU does not implement it, so on
  CPU the same offsets drive an all_gather-based stand-in with identical semantics (tests check the offset logic).
- "all_to_all" (runs anywhere): a plain `jax.lax.all_to_all` of fixed-size chunks. Without a capacity limit the
  chunk to each shard must hold the worst case, all n*k local rows, so it moves D times the data.
The receive buffer is the worst case D*n*k rows in both; the kernels skip its unused row tiles.

The token side (sort by destination, exchange, unsort, combine) is separate from the expert side
(`kernels.moe.ops.local_expert_ffn`), so a different all-to-all (hierarchical, overlapped with compute) can wrap
the same per-shard function.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from kernels import backend
from kernels.moe.ops import local_expert_ffn
from kernels.moe.routing import gather_rows

F32 = jnp.float32
TRANSPORTS = ("auto", "ragged", "all_to_all")


def _exclusive_cumsum(a, axis=0):
    return jnp.cumsum(a, axis=axis) - a


def _emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *,
                                axis_name):
    """`jax.lax.ragged_all_to_all` semantics from all_gathers, for XLA:CPU (which lacks the collective)."""
    del recv_sizes  # implied by the gathered send sizes, as in the real collective
    me = jax.lax.axis_index(axis_name)
    every_operand = jax.lax.all_gather(operand, axis_name)  # [D, R_in, ...]
    offsets_in, sizes, offsets_out = (jax.lax.all_gather(a, axis_name)[:, me]
                                      for a in (input_offsets, send_sizes, output_offsets))  # [D] per source
    q = jnp.arange(output.shape[0])[:, None]
    inside = (q >= offsets_out[None]) & (q < (offsets_out + sizes)[None])  # [Q, D]: which source writes row q
    source = jnp.argmax(inside, axis=1)
    row = offsets_in[source] + q[:, 0] - offsets_out[source]
    got = every_operand[source, jnp.clip(row, 0, operand.shape[0] - 1)]
    mask = jnp.any(inside, axis=1).reshape((-1,) + (1,) * (output.ndim - 1))
    return jnp.where(mask, got, output)


def _ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *, axis_name):
    collective = _emulated_ragged_all_to_all if backend.platform() == "cpu" else jax.lax.ragged_all_to_all
    return collective(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, axis_name=axis_name)


def shard_ffn(x, weights, expert_ids, w_gate_up, w_down, *, axis, num_shards, transport, impl=None, tile=None,
              stats_axes=()):
    """The body on one shard, inside shard_map: x [n, H], weights/expert_ids [n, k], local experts w_* [E_local, ...].
    Rows are exchanged over `axis` only; the stats are summed over `axis` and over `stats_axes` (other mesh axes that
    split the tokens, e.g. data and sequence, when the caller's shard_map spans them). `transport` is "ragged" or
    "all_to_all". Returns (y [n, H], stats)."""
    D, (n, k), E_local = num_shards, expert_ids.shape, w_gate_up.shape[0]
    R = n * k
    flat = expert_ids.reshape(R).astype(jnp.int32)
    dest = flat // E_local
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)  # rows grouped by destination shard, then expert
    send_sizes = jnp.bincount(dest, length=D).astype(jnp.int32)
    send_start = _exclusive_cumsum(send_sizes)
    me = jax.lax.axis_index(axis)

    if transport == "all_to_all":  # chunk d of the send buffer = rows for shard d, padded to R rows
        sorted_dest = dest[order]
        buf_row = sorted_dest * R + jnp.arange(R, dtype=jnp.int32) - send_start[sorted_dest]
        src = jnp.full((D * R,), R, jnp.int32).at[buf_row].set(order)  # flat slot of each buffer row
    else:  # compact: the rows sorted by destination
        buf_row, src = jnp.arange(R, dtype=jnp.int32), order
    pos = jnp.zeros((R,), jnp.int32).at[order].set(buf_row, unique_indices=True)  # buffer row of each slot
    send_x = gather_rows(x, jnp.where(src < R, src // k, n), pos.reshape(n, k))
    send_ids = jnp.take(flat, src, mode="fill", fill_value=-1)

    if transport == "all_to_all":
        exchange = functools.partial(jax.lax.all_to_all, axis_name=axis, split_axis=0, concat_axis=0, tiled=True)
        recv_x, recv_ids = exchange(send_x), exchange(send_ids)
        received = jnp.sum(recv_ids >= 0)
        transported = D * R
    else:
        counts = jax.lax.all_gather(send_sizes, axis)  # [D, D]: counts[s, d] rows from shard s to shard d
        recv_sizes = counts[:, me]
        out_offsets = _exclusive_cumsum(counts, 0)[me]  # where my chunk lands on each receiver
        fwd = functools.partial(_ragged_all_to_all, input_offsets=send_start, send_sizes=send_sizes,
                                output_offsets=out_offsets, recv_sizes=recv_sizes, axis_name=axis)
        recv_x = fwd(send_x, jnp.zeros((D * R,) + x.shape[1:], x.dtype))
        recv_ids = fwd(send_ids, jnp.full((D * R,), -1, jnp.int32))
        received = jnp.sum(recv_sizes)
        transported = R

    y_recv, layout = local_expert_ffn(recv_x, recv_ids, w_gate_up, w_down, expert_offset=me * E_local, impl=impl,
                                      tile=tile, expected_rows=R)

    if transport == "all_to_all":
        back = exchange(y_recv)
    else:
        back = _ragged_all_to_all(y_recv, jnp.zeros((R,) + x.shape[1:], y_recv.dtype),
                                  _exclusive_cumsum(recv_sizes), recv_sizes,
                                  _exclusive_cumsum(counts, 1)[:, me], send_sizes, axis_name=axis)
    rows = gather_rows(back, pos, src[:, None]).reshape(n, k, -1)
    y = jnp.einsum("nkh,nk->nh", rows, weights.astype(rows.dtype))

    kernel_rows = layout.num_active_tiles[0] * layout.tile
    stats = dict(routed_rows=R, transported_rows=transported, kernel_rows=kernel_rows)
    every = (axis, *stats_axes)
    stats = {name: jax.lax.psum(jnp.asarray(v, F32), every) for name, v in stats.items()}
    stats["max_received_rows"] = jax.lax.pmax(received.astype(F32), every)
    return y, stats


def resolve_transport(transport: str) -> str:
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    if transport == "auto":
        transport = "ragged" if backend.platform() in ("tpu", "gpu", "cuda", "rocm") else "all_to_all"
    return transport


def ep_routed_ffn(x, weights, expert_ids, w_gate_up, w_down, *, mesh, axis: str = "expert", transport="auto",
                  impl=None, tile=None):
    """Routed SwiGLU experts with tokens and experts sharded over mesh axis `axis` (D shards).

    x [N, H], weights/expert_ids [N, k] are split by rows over `axis` (N % D == 0); w_gate_up [E, H, 2I] and
    w_down [E, I, H] are split by experts (E % D == 0). Returns (y [N, H], metrics) where metrics are global
    scalars: routed_rows, transported_rows (rows the exchange carries, padding included), kernel_rows (row-tile
    rows the grouped matmuls ran), max_received_rows (the most rows any shard got) against receive_buffer_rows (each
    shard's static buffer), and transport_padding_fraction / tile_padding_fraction (the share of transported rows,
    or of kernel rows, that are padding)."""
    transport = resolve_transport(transport)
    D = mesh.shape[axis]
    N, E = expert_ids.shape[0], w_gate_up.shape[0]
    if N % D or E % D:
        raise ValueError(f"mesh axis {axis!r}={D} must divide the token count {N} and num_experts={E}")
    body = functools.partial(shard_ffn, axis=axis, num_shards=D, transport=transport, impl=impl, tile=tile)
    rows, experts = P(axis), P(axis, None, None)
    # check_vma=False: interpreted Pallas kernels re-evaluate their body on device-varying values
    # (docs/spec/kernels.md §2).
    y, stats = jax.shard_map(body, mesh=mesh, in_specs=(rows, rows, rows, experts, experts),
                             out_specs=(rows, P()), check_vma=False)(x, weights, expert_ids, w_gate_up, w_down)
    stats["receive_buffer_rows"] = jnp.asarray(float(N * expert_ids.shape[1]), F32)  # per shard: D * n * k
    stats["transport_padding_fraction"] = 1.0 - stats["routed_rows"] / stats["transported_rows"]
    stats["tile_padding_fraction"] = 1.0 - stats["routed_rows"] / jnp.maximum(stats["kernel_rows"], 1.0)
    return y, stats
