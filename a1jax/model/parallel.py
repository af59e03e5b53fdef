"""How a forward pass uses the mesh beyond GSPMD: expert parallelism and sequence parallelism.

Most of the model is plain jnp under `jax.jit` with `NamedSharding`s (data, fsdp and tensor come from the logical-axis
rules in a1jax/sharding.py alone). Three layers need explicit collectives, written with `jax.shard_map`:

- the routed experts on an `expert` axis > 1: tokens travel to the shard holding their expert and back
  (kernels.moe.expert_parallel: `ragged_all_to_all` on GPU/TPU, a worst-case padded `all_to_all` on CPU); dropless;
- full attention on a `sequence` axis > 1: ring attention (K/V rotate with `ppermute`, log-sum-exp merge, custom
  VJP; kernels.attention.ring_attention);
- Gated DeltaNet on a `sequence` axis > 1: the conv halo from the previous shard, then context-parallel state
  passing (kernels.gdn.context_parallel_gated_delta_rule).

`Parallel` is static (hashable) and rides in the train step's context; `forward(..., parallel=None)` is the
single-device program, and gives the same numbers.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


@dataclasses.dataclass(frozen=True)
class Parallel:
    mesh: Mesh
    batch_axes: tuple  # mesh axes (size > 1) that split the batch dimension, major to minor
    sequence_axis: str | None  # the axis that splits the sequence, when its size is > 1
    expert_axis: str | None  # the axis that splits the routed experts, when its size is > 1
    tensor_axis: str | None  # the axis that splits heads, when its size is > 1
    ep_transport: str = "auto"  # kernels.moe.ep_routed_ffn transports: auto | ragged | all_to_all

    @staticmethod
    def from_mesh(mesh: Mesh, rules: Mapping, ep_transport: str = "auto") -> "Parallel":
        def axes(name):
            rule = rules.get(name)
            rule = rule if isinstance(rule, tuple) else ((rule,) if rule else ())
            return tuple(a for a in rule if mesh.shape[a] > 1)

        one = lambda name: (axes(name) or (None,))[0]
        return Parallel(mesh=mesh, batch_axes=axes("batch"), sequence_axis=one("length"),
                        expert_axis=one("experts"), tensor_axis=one("q_heads"), ep_transport=ep_transport)

    def size(self, axis: str | None) -> int:
        return 1 if axis is None else self.mesh.shape[axis]

    def heads_axis(self, *head_counts: int) -> str | None:
        """The tensor axis when it divides every head count given (so local heads keep their GQA grouping)."""
        t = self.size(self.tensor_axis)
        return self.tensor_axis if t > 1 and all(h % t == 0 for h in head_counts) else None

    def tokens(self, *rest) -> P:
        """Spec of a [B, T, ...] activation: B over the batch axes, T over the sequence axis."""
        b = self.batch_axes if len(self.batch_axes) != 1 else self.batch_axes[0]
        return P(b or None, self.sequence_axis, *rest)

    def token_axes(self) -> tuple:
        return self.batch_axes + ((self.sequence_axis,) if self.sequence_axis else ())

    def token_shards(self) -> int:
        return math.prod(self.size(a) for a in self.token_axes())


def constrain_tokens(x, par: "Parallel | None"):
    """Pins an activation [B, T, ...] to the batch x sequence sharding (MaxText-style activation constraints): the
    partitioner then never guesses a hidden-dimension sharding for it (e.g. from the fsdp-sharded embedding table)."""
    if par is None:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(par.mesh, par.tokens(*([None] * (x.ndim - 2)))))
