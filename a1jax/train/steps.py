"""Pure train-step functions: stage 1's (`sft_step`), the eval step, and the guarded update every stage ends in.

A step is `step(ctx, state, batch) -> (state, metrics)`; the stage table (a1jax/stages.py) names each stage's step,
and the loop binds the static `StepContext` and jits it with donated state. Batches are dicts of [B, T] arrays
(a1jax/data/pipeline.py): tokens, targets, loss_mask, segment_ids, positions, domain_ids. `targets[t]` is the
token that follows `tokens[t]` in its segment and `loss_mask[t]` says whether it is supervised.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from a1jax import model
from a1jax.model import losses
from a1jax.model.config import ModelConfig
from a1jax.train.state import TrainState

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class StepContext:
    """Everything static a step needs. Hashable, so it can be closed over by jit."""
    model: ModelConfig
    tx: Any  # optax.GradientTransformation
    schedule: Any  # step -> learning rate
    num_domains: int = 1
    microbatches: int = 1
    z_loss_coef: float = 0.0
    mtp_loss_coef: float = 0.0
    parallel: Any = None  # a1jax.model.parallel.Parallel: expert / sequence parallelism over the mesh, or None
    options: Any = None  # stage options: a frozen, hashable dataclass

    @property
    def trains_mtp(self) -> bool:
        """Whether the step's loss has the MTP term (stages sft and teacher_sft; the others refuse a coefficient)."""
        return self.mtp_loss_coef > 0

    @property
    def sequence_shards(self) -> int:
        """How many ways the mesh splits the sequence: the chunked LM-head losses project each shard's own positions."""
        return 1 if self.parallel is None else self.parallel.size(self.parallel.sequence_axis)


def _split_microbatches(batch, k: int):
    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by train.microbatches={k}")
        return x.reshape(k, x.shape[0] // k, *x.shape[1:])
    return jax.tree.map(split, batch)


def _sft_microbatch_loss(params, mb, ctx: StepContext, norm):
    """Masked CE over this microbatch divided by the *global* supervised-token count, plus aux terms."""
    cfg = ctx.model
    out = model.forward(params, mb["tokens"], cfg, positions=mb["positions"], segment_ids=mb["segment_ids"],
                        return_logits=False, mtp=ctx.trains_mtp, parallel=ctx.parallel)
    w_out = model.lm_head_weight(params, cfg)
    m = mb["loss_mask"].astype(F32)
    with jax.named_scope("lm_head_loss"):
        logp, lse = losses.token_logprobs(out.hidden, w_out, mb["targets"], cfg.loss_chunk_size, mask=m,
                                          sequence_shards=ctx.sequence_shards)
    nll = -logp * m
    z = jnp.sum(jnp.square(lse) * m)
    loss = (jnp.sum(nll) + ctx.z_loss_coef * z) / norm["tokens"] + out.aux["moe_loss"] / ctx.microbatches
    mtp_sum = jnp.zeros((), F32)
    if ctx.trains_mtp:
        mtp_sum, _ = losses.mtp_nll(params, out, mb["targets"], mb["loss_mask"], mb["segment_ids"], cfg,
                                    sequence_shards=ctx.sequence_shards)
        loss = loss + ctx.mtp_loss_coef * mtp_sum / norm["mtp_tokens"]
    domains = mb["domain_ids"].reshape(-1)
    metrics = {
        "nll_sum": jnp.sum(nll),
        "z_sum": z,
        "mtp_sum": mtp_sum,
        "aux_loss": out.aux["aux_loss"] / ctx.microbatches,
        "router_z_loss": out.aux["router_z_loss"] / ctx.microbatches,
        "domain_nll_sum": jax.ops.segment_sum(nll.reshape(-1), domains, ctx.num_domains),
        "domain_tokens": jax.ops.segment_sum(m.reshape(-1), domains, ctx.num_domains),
        "tokens": jnp.sum((mb["segment_ids"] != 0).astype(F32)),
    }
    if "expert_counts" in out.aux:
        metrics["expert_counts"] = out.aux["expert_counts"]
    if "ep_padding_fraction" in out.aux:
        metrics["ep_padding_fraction"] = out.aux["ep_padding_fraction"] / ctx.microbatches
    return loss, metrics


def _all_finite(tree) -> jax.Array:
    """One boolean: every element of every floating leaf of `tree` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _apply_guarded_update(ctx: StepContext, state: TrainState, grads, loss):
    """Adam update unless the loss, the gradient, the update or the new parameters are not finite (an infinite
    learning rate turns finite gradients into NaN parameters); then the state is kept and the skip counted."""
    with jax.named_scope("optimizer"):
        grad_norm = optax.global_norm(grads)
        updates, new_opt = ctx.tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        ok = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(updates) & _all_finite(new_params)
              & _all_finite(new_opt))
        # Without the barrier XLA fuses the chain of per-leaf `and`s into every leaf's select below: O(leaves^2)
        # scalar ops (87K of the smoke-test step's 224K HLO lines), most of its compile time.
        ok = jax.lax.optimization_barrier(ok)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    skip = (~ok).astype(jnp.int32)
    new_state = TrainState(step=state.step + 1, params=keep(new_params, state.params),
                           opt_state=keep(new_opt, state.opt_state), rng=state.rng,
                           skipped_total=state.skipped_total + skip,
                           skipped_consecutive=jnp.where(ok, 0, state.skipped_consecutive + 1))
    return new_state, {"grad_norm": grad_norm, "skipped": skip, "skipped_consecutive": new_state.skipped_consecutive}


def sft_loss_and_grads(ctx: StepContext, params, batch):
    """(loss, metrics, grads) of the SFT objective, accumulated over `ctx.microbatches` slices of the batch.

    The CE is normalised by the supervised-token count of the *whole* batch, so k microbatches give the same gradient
    as one big batch. The MoE aux loss is per microbatch (averaged), as in every framework that accumulates.
    """
    m = batch["loss_mask"].astype(F32)
    norm = {"tokens": jnp.maximum(jnp.sum(m), 1.0)}
    if ctx.mtp_loss_coef > 0:
        _, mtp_mask = losses.mtp_targets(batch["targets"], batch["loss_mask"], batch["segment_ids"])
        norm["mtp_tokens"] = jnp.maximum(jnp.sum(mtp_mask), 1.0)
    grad_fn = jax.value_and_grad(_sft_microbatch_loss, has_aux=True)

    def accumulate(carry, mb):
        g_acc, l_acc, m_acc = carry
        (loss, metrics), g = grad_fn(params, mb, ctx, norm)
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss, jax.tree.map(jnp.add, m_acc, metrics)), None

    mbs = _split_microbatches(batch, ctx.microbatches)
    (loss, metrics), grads = grad_fn(params, jax.tree.map(lambda x: x[0], mbs), ctx, norm)
    if ctx.microbatches > 1:
        rest = jax.tree.map(lambda x: x[1:], mbs)
        (grads, loss, metrics), _ = jax.lax.scan(accumulate, (grads, loss, metrics), rest)
    metrics["loss"] = metrics["nll_sum"] / norm["tokens"]
    metrics["total_loss"] = loss
    metrics["supervised_tokens"] = jnp.sum(m)
    if ctx.mtp_loss_coef > 0:
        metrics["mtp_loss"] = metrics["mtp_sum"] / norm["mtp_tokens"]
    return loss, metrics, grads


def sft_step(ctx: StepContext, state: TrainState, batch) -> tuple[TrainState, dict]:
    """Stage 1: supervised fine-tuning on agentic trajectories."""
    loss, metrics, grads = sft_loss_and_grads(ctx, state.params, batch)
    new_state, update_metrics = _apply_guarded_update(ctx, state, grads, loss)
    return new_state, dict(metrics, **update_metrics, learning_rate=ctx.schedule(state.step))


def eval_step(ctx: StepContext, params, batch) -> dict:
    """Held-out loss sums (no update). The loop divides by the token count over all eval batches."""
    _, metrics = _sft_microbatch_loss(params, batch, dataclasses.replace(ctx, mtp_loss_coef=0.0, microbatches=1),
                                      {"tokens": jnp.ones((), F32)})
    return {k: metrics[k] for k in ("nll_sum", "domain_nll_sum", "domain_tokens")}
