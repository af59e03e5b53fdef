"""The train state: params, optimizer state, step, rng and the NaN-guard counters, as one pytree."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from a1jax import sharding
from a1jax.model import params as model_params


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    step: Any  # int32 scalar: number of optimizer steps taken (skipped ones count too)
    params: Any  # boxed parameter tree (leaves are model.params.Param)
    opt_state: Any
    rng: Any  # uint32 [2] raw PRNG key data
    skipped_total: Any  # int32: updates skipped by the NaN/Inf guard
    skipped_consecutive: Any  # int32: skips since the last good update


def init_state(cfg, tx, rng) -> TrainState:
    k_params, k_state = jax.random.split(rng)
    params = model_params.init(cfg, k_params, include_mtp=cfg.mtp_num_hidden_layers > 0)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params), rng=jax.random.key_data(k_state),
                      skipped_total=zero, skipped_consecutive=zero)


def with_new_params(state: TrainState, params, tx, shardings: TrainState) -> TrainState:
    """`state` with `params` (already placed) and a fresh optimizer state for them, laid out as `shardings` (the
    step's in/out shardings): an optimizer state with another layout would make the first step's output differ from
    its input, and the step compile twice."""
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    return dataclasses.replace(state, params=params, opt_state=opt_state)


def state_shardings(abstract_state, mesh, rules):
    """Parameters and every optimizer moment follow their logical axes; scalars and the rng are replicated."""
    replicated = NamedSharding(mesh, P())

    def leaf(x):
        if model_params.is_param(x):
            return model_params.Param(NamedSharding(mesh, sharding.logical_to_spec(x.axes, x.value.shape, mesh, rules)),
                                      x.axes)
        return replicated

    return jax.tree.map(leaf, abstract_state, is_leaf=model_params.is_param)
