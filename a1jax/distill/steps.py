"""Stage-2/3 train steps: "teacher_sft", "grpo" and "opd", named beside "sft" in the stage table (a1jax/stages.py).

All three end in the same guarded optimizer update as `sft_step` (a non-finite loss or gradient skips the update).
Stage options come from `ctx.options`, a frozen dataclass built from the experiment's `config.grpo` or
`config.distill` section by a1jax.train.experiment.step_options. Batches are the packed dicts of
a1jax/data/pipeline.py plus, for RL/OPD, behavior_logp f32[B,T] (the sampler's log-prob of each target), and for
GRPO advantages f32[B,T] and optional ref_logp f32[B,T], reward f32[B] and success f32[B] (per row, for logging).
`opd_step` takes the routed teacher targets (a TeacherSparse dict, see losses.py) as a third argument.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from a1jax import model
from a1jax.distill import losses
from a1jax.train.state import TrainState
from a1jax.train.steps import StepContext, _apply_guarded_update, _split_microbatches, sft_step

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class GRPOOptions:
    """config.grpo: see losses.policy_gradient_loss."""
    loss_type: str = "ppo"  # "ppo" | "tis"
    eps_low: float = 0.2
    eps_high: float = 0.2
    tis_cap: float = 2.0
    kl_coef: float = 0.0  # k3 KL to the reference; needs batch["ref_logp"]
    norm: str = "token"  # token | sequence | domain

    def check(self, where: str = "config.grpo"):
        _one_of(where, "loss_type", self.loss_type, ("ppo", "tis"))
        _one_of(where, "norm", self.norm, losses.NORMS)
        _require(self.eps_low >= 0 and self.eps_high >= 0, where, "eps_low/eps_high",
                 (self.eps_low, self.eps_high), "non-negative numbers")
        _require(self.tis_cap > 0, where, "tis_cap", self.tis_cap, "a positive number")
        _require(self.kl_coef >= 0, where, "kl_coef", self.kl_coef, "a non-negative number")


@dataclasses.dataclass(frozen=True)
class OPDOptions:
    """config.distill: see losses.multi_teacher_opd_loss; include_sampled adds the sampled token to the support.

    policy: "on" (the recipe: the student rolls out and each token is scored by its domain's teacher), "off"
    (sequence-level KD, an ablation: each domain's teacher rolls out the step's tasks and the student takes an SFT
    step on the teacher's generated tokens; the KL, IS and estimator options are unused, and the NLL is reduced by
    `norm` like the KL term it replaces, so both policies weigh the domains the same) or "mix" (GKD's data mix,
    docs/spec/recipe.md §2.1: the student rolls out a 1 - off_share part of each domain's tasks and the domain's
    teacher the rest, and every token of both is scored by the teacher and trained by the same divergence; on the
    teacher's tokens, marked by batch["off_policy"], the importance weight is 1: they are not the student's samples,
    and the analytic divergence at each position needs none)."""
    estimator: str = "salient"  # salient | sampled | full | mix
    direction: str = "reverse"  # reverse | forward | jsd
    beta: float = 1.0  # jsd mixture weight
    mode: str = "tail"  # tail | renorm
    include_sampled: bool = True
    mix_weight: float = 0.5
    is_low: float = 0.2
    is_high: float = 5.0
    norm: str = "domain"
    domain_weights: tuple | None = None  # [num_domains], equal if None
    domain_weighting: str = "fixed"  # fixed | kl
    kl_power: float = 1.0
    sft_coef: float = 0.0
    reward_coef: float = 0.0  # outcome-reward policy gradient on batch["advantages"]
    policy: str = "on"  # on | off | mix (see above)
    off_share: float = 0.5  # policy="mix": the share of each domain's tasks its teacher rolls out (GKD's 1 - λ)
    # policy "off"/"mix": the teachers' sampling temperature (0: greedy); -1 samples at config.rollout.temperature
    off_temperature: float = -1.0

    def check(self, where: str = "config.distill"):
        _one_of(where, "policy", self.policy, POLICIES)
        if self.policy == "off":
            _require(self.sft_coef == 0 and self.reward_coef == 0, where, "sft_coef/reward_coef",
                     (self.sft_coef, self.reward_coef), "0 and 0 with policy='off' (its loss is the SFT term alone)")
        if self.policy == "mix":
            _require(self.reward_coef == 0, where, "reward_coef", self.reward_coef,
                     "0 with policy='mix' (the teachers' rollouts are not the student's samples to reinforce)")
            _require(self.estimator in ("salient", "full"), where, "estimator", self.estimator,
                     "'salient' or 'full' with policy='mix' (an analytic divergence: the sampled-token estimator "
                     "needs the student's own samples)")
        _require(self.off_temperature == -1.0 or self.off_temperature >= 0.0, where, "off_temperature",
                 self.off_temperature, "-1 (config.rollout.temperature) or a temperature >= 0 (0: greedy)")
        _require(0.0 < self.off_share < 1.0, where, "off_share", self.off_share,
                 "a number strictly between 0 and 1 (0 is policy='on', 1 is policy='off')")
        _one_of(where, "estimator", self.estimator, losses.ESTIMATORS)
        _one_of(where, "direction", self.direction, losses.DIRECTIONS)
        _one_of(where, "mode", self.mode, losses.MODES)
        _one_of(where, "norm", self.norm, losses.NORMS)
        _one_of(where, "domain_weighting", self.domain_weighting, losses.DOMAIN_WEIGHTINGS)
        _require(0.0 <= self.beta <= 1.0, where, "beta", self.beta, "a number in [0, 1]")
        _require(0.0 <= self.mix_weight <= 1.0, where, "mix_weight", self.mix_weight, "a number in [0, 1]")
        _require(0.0 <= self.is_low < 1.0 < self.is_high, where, "is_low/is_high", (self.is_low, self.is_high),
                 "0 <= is_low < 1 < is_high")
        if self.domain_weights is not None:
            _require(all(w >= 0 for w in self.domain_weights), where, "domain_weights", self.domain_weights,
                     "non-negative numbers, one per domain")

    def loss_kwargs(self) -> dict:
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if f.name not in ("include_sampled", "policy", "off_share", "off_temperature")}
        if self.policy == "off":
            kw["sft_coef"] = 1.0
        return kw


POLICIES = ("on", "off", "mix")


def _one_of(where, field, value, allowed):
    _require(value in allowed, where, field, value, f"one of {tuple(allowed)}")


def _require(cond, where, field, value, expected):
    if not cond:
        raise ValueError(f"{where}.{field}={value!r}: expected {expected}")


def _options(ctx: StepContext, cls):
    opts = cls() if ctx.options is None else ctx.options
    if not isinstance(opts, cls):
        raise ValueError(f"StepContext.options is a {type(opts).__name__}; this step needs {cls.__name__}")
    return opts


def _require_keys(batch: dict, keys, step: str):
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"{step}: the batch lacks {missing}; it has {sorted(batch)}")


def _forward(params, mb, ctx: StepContext):
    cfg = ctx.model
    out = model.forward(params, mb["tokens"], cfg, positions=mb["positions"], segment_ids=mb["segment_ids"],
                        return_logits=False, parallel=ctx.parallel)
    return out, model.lm_head_weight(params, cfg)


def _aux_metrics(out, ctx: StepContext, mb) -> dict:
    return {"aux_loss": out.aux["aux_loss"] / ctx.microbatches,
            "router_z_loss": out.aux["router_z_loss"] / ctx.microbatches,
            "tokens": jnp.sum((mb["segment_ids"] != 0).astype(F32))}


def _accumulate(loss_fn, params, data, k: int):
    """(loss, metric sums, grads) of `loss_fn(params, data_mb)` summed over k microbatches (leading-axis slices)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    mbs = _split_microbatches(data, k)
    (loss, metrics), grads = grad_fn(params, jax.tree.map(lambda x: x[0], mbs))
    if k > 1:
        def body(carry, mb):
            (l, m), g = grad_fn(params, mb)
            return jax.tree.map(jnp.add, carry, (g, l, m)), None
        (grads, loss, metrics), _ = jax.lax.scan(body, (grads, loss, metrics), jax.tree.map(lambda x: x[1:], mbs))
    return loss, metrics, grads


def _update(ctx: StepContext, state: TrainState, loss, metrics, grads):
    new_state, update_metrics = _apply_guarded_update(ctx, state, grads, loss)
    return new_state, dict(metrics, **update_metrics, total_loss=loss, learning_rate=ctx.schedule(state.step))


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: domain teachers
# ----------------------------------------------------------------------------------------------------------------

def teacher_sft_step(ctx: StepContext, state: TrainState, batch) -> tuple[TrainState, dict]:
    """Stage 2 (SFT variant): the stage-1 objective on one domain's accepted rollouts and demonstrations."""
    return sft_step(ctx, state, batch)


def _row_domains(batch):
    """Domain of each row: the domain of its first non-padding token. [B]"""
    first = jnp.argmax(batch["segment_ids"] != 0, axis=1)
    return jnp.take_along_axis(batch["domain_ids"], first[:, None], axis=1)[:, 0]


def grpo_loss_and_grads(ctx: StepContext, params, batch):
    """(loss, metrics, grads) of the GRPO objective (losses.policy_gradient_loss) over `ctx.microbatches` slices."""
    opts = _options(ctx, GRPOOptions)
    need = ["behavior_logp", "advantages"] + (["ref_logp"] if opts.kl_coef else [])
    _require_keys(batch, need, "grpo_step")
    cfg, nd = ctx.model, ctx.num_domains
    m = batch["loss_mask"].astype(F32)
    weights = losses.token_weights(m, batch["segment_ids"], batch["domain_ids"], norm=opts.norm, num_domains=nd)

    def loss_fn(params, data):
        mb, w = data
        out, w_out = _forward(params, mb, ctx)
        mm = mb["loss_mask"].astype(F32)
        stats = losses.chunked_logits_stats(out.hidden, w_out, mb["targets"], chunk=cfg.loss_chunk_size, mask=mm,
                                            sequence_shards=ctx.sequence_shards)
        per_token, diag = losses.policy_gradient_loss(
            stats.target_logp, mb["behavior_logp"], mb["advantages"], loss_type=opts.loss_type,
            eps_low=opts.eps_low, eps_high=opts.eps_high, tis_cap=opts.tis_cap,
            ref_logp=mb.get("ref_logp") if opts.kl_coef else None, kl_coef=opts.kl_coef)
        loss = jnp.sum(w * jnp.where(mm > 0, per_token, 0.0)) + out.aux["moe_loss"] / ctx.microbatches
        s = lambda x: jnp.sum(jnp.where(mm > 0, x, 0.0))
        nll = jnp.where(mm > 0, -stats.target_logp, 0.0)
        metrics = {"clipped_sum": s(diag["clipped"]), "kl_behavior_sum": s(diag["kl_behavior"]),
                   "kl_ref_sum": s(diag.get("kl_ref", jnp.zeros_like(mm))), "entropy_sum": s(stats.entropy),
                   "nll_sum": jnp.sum(nll), "supervised_tokens": jnp.sum(mm),
                   "domain_nll_sum": losses.domain_sums(nll, mb["domain_ids"], nd),
                   "domain_tokens": losses.domain_sums(mm, mb["domain_ids"], nd), **_aux_metrics(out, ctx, mb)}
        return loss, metrics

    loss, metrics, grads = _accumulate(loss_fn, params, (batch, weights), ctx.microbatches)
    n = jnp.maximum(metrics["supervised_tokens"], 1.0)
    B, T = m.shape
    seq_key = (jnp.arange(B)[:, None] * (T + 1) + batch["segment_ids"]).reshape(-1)
    n_seq = jnp.sum(jax.ops.segment_sum(m.reshape(-1), seq_key, B * (T + 1)) > 0)
    metrics.update(loss=loss, clip_frac=metrics["clipped_sum"] / n, kl_behavior=metrics["kl_behavior_sum"] / n,
                   kl_ref=metrics["kl_ref_sum"] / n, entropy=metrics["entropy_sum"] / n,
                   response_length=metrics["supervised_tokens"] / jnp.maximum(n_seq, 1))
    rows = _row_domains(batch)
    for key in ("reward", "success"):
        if key in batch:
            metrics[f"domain_{key}_sum"] = jax.ops.segment_sum(batch[key].astype(F32), rows, nd)
            metrics["domain_rows"] = jax.ops.segment_sum(jnp.ones_like(rows, F32), rows, nd)
            metrics[f"domain_{key}"] = metrics[f"domain_{key}_sum"] / jnp.maximum(metrics["domain_rows"], 1.0)
    return loss, metrics, grads


def grpo_step(ctx: StepContext, state: TrainState, batch) -> tuple[TrainState, dict]:
    """Stage 2 (RL variant): GRPO on one domain's rollouts with per-token group-normalised advantages."""
    loss, metrics, grads = grpo_loss_and_grads(ctx, state.params, batch)
    return _update(ctx, state, loss, metrics, grads)


# ----------------------------------------------------------------------------------------------------------------
# Stage 3: multi-teacher on-policy distillation
# ----------------------------------------------------------------------------------------------------------------

def opd_loss_and_grads(ctx: StepContext, params, batch, teacher_targets):
    """(loss, metrics, grads) of losses.multi_teacher_opd_loss on the student's rollouts and routed teacher targets."""
    opts = _options(ctx, OPDOptions)
    _require_keys(batch, ["behavior_logp"] + (["advantages"] if opts.reward_coef else []), "opd_step")
    _require_keys(teacher_targets, ["topk_ids", "topk_logp", "sampled_logp", "tail_logp", "valid"]
                  + (["logp"] if opts.estimator == "full" else []), "opd_step teacher_targets")
    cfg, nd = ctx.model, ctx.num_domains
    if opts.domain_weights is not None and len(opts.domain_weights) != nd:
        raise ValueError(f"config.distill.domain_weights has {len(opts.domain_weights)} entries; expected one per "
                         f"domain ({nd})")
    off = opts.policy == "off"  # sequence-level KD: no teacher target counts, the loss is the SFT term alone
    teacher = dict(teacher_targets, valid=jnp.zeros_like(teacher_targets["valid"])) if off else teacher_targets
    if opts.include_sampled and opts.estimator in ("salient", "mix"):
        teacher = losses.with_sampled_token(teacher, batch["targets"])
    seg, dom = batch["segment_ids"], batch["domain_ids"]
    m = batch["loss_mask"].astype(F32) * (teacher["valid"] > 0)
    weights = losses.token_weights(m, seg, dom, norm=opts.norm, num_domains=nd, domain_weights=opts.domain_weights)
    sft_mask = batch.get("sft_mask", batch["loss_mask"]).astype(F32)
    if off:
        sft_weights = losses.token_weights(sft_mask, seg, dom, norm=opts.norm, num_domains=nd,
                                           domain_weights=opts.domain_weights)
    else:
        sft_weights = losses.token_weights(sft_mask, seg, dom) if opts.sft_coef else jnp.zeros_like(m)
    compute_mask = jnp.maximum(batch["loss_mask"].astype(F32), sft_mask if (opts.sft_coef or off) else 0.0)

    def loss_fn(params, data):
        mb, tb, w, w_sft, cm = data
        out, w_out = _forward(params, mb, ctx)
        if opts.estimator == "full":  # explicit [B,T,V] path: small vocabularies and tests only
            stats = losses.logits_stats(model.logits_from_hidden(params, out.hidden, cfg), mb["targets"])
        else:
            support = tb["topk_ids"] if opts.estimator in ("salient", "mix") else None
            stats = losses.chunked_logits_stats(out.hidden, w_out, mb["targets"], support,
                                                chunk=cfg.loss_chunk_size, mask=cm, sequence_shards=ctx.sequence_shards)
        loss, metrics = losses.multi_teacher_opd_loss(stats, tb, mb, num_domains=nd, weights=w,
                                                      sft_weights=w_sft, **opts.loss_kwargs())
        return loss + out.aux["moe_loss"] / ctx.microbatches, dict(metrics, **_aux_metrics(out, ctx, mb))

    data = (batch, teacher, weights, sft_weights, compute_mask)
    loss, metrics, grads = _accumulate(loss_fn, params, data, ctx.microbatches)
    metrics = losses.finalize_opd_metrics(metrics)
    metrics["loss"] = loss
    return loss, metrics, grads


def opd_step(ctx: StepContext, state: TrainState, batch, teacher_targets) -> tuple[TrainState, dict]:
    """Stage 3: one update of the student on its own rollouts against the domain-routed teacher targets."""
    loss, metrics, grads = opd_loss_and_grads(ctx, state.params, batch, teacher_targets)
    return _update(ctx, state, loss, metrics, grads)
