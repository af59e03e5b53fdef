"""Stage-2/3 losses as pure functions of student log-probs and teacher targets (docs/spec/recipe.md §2, §6.2).

Student quantities come from `chunked_logits_stats`, which projects hidden states through the LM head one sequence
chunk at a time (`a1jax.model.losses.map_logit_chunks`, the one chunked projection of the codebase) ([B, chunk, V] logits, rematerialised in the backward pass), so no [T, V] array ever exists. The
full-vocabulary divergences (`full_reverse_kl`, ...) take dense logits: they are the reference for tests and small
vocabularies only.

Teacher targets are a `TeacherSparse` dict (docs/spec/recipe.md §6.1), all in the *student* vocabulary:
    topk_ids i32[B,T,K] (-1 = pad/unmapped), topk_logp f32[B,T,K], sampled_logp f32[B,T] (teacher log p of the
    target token), tail_logp f32[B,T] (log of the teacher mass outside the mapped top-k), valid f32[B,T].

Reductions are written as per-token weights that sum to 1 over the whole batch (`token_weights`): the loss is then
linear in the tokens, so microbatches accumulate to exactly the full-batch gradient for every normalisation.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from a1jax.model.losses import map_logit_chunks  # noqa: F401 (the one chunked LM-head projection)

F32 = jnp.float32
DIRECTIONS = ("reverse", "forward", "jsd")
MODES = ("tail", "renorm")
NORMS = ("token", "sequence", "domain")
ESTIMATORS = ("salient", "sampled", "full", "mix")
DOMAIN_WEIGHTINGS = ("fixed", "kl")


class LogitStats(NamedTuple):
    target_logp: Any  # [B,T] student log q(target)
    support_logp: Any  # [B,T,K] student log q(v) for v in the support (-inf where the id is -1), or None
    lse: Any  # [B,T] logsumexp of the logits
    entropy: Any  # [B,T] student entropy H(q)
    logp: Any = None  # [B,T,V] full log-probs: only on the explicit small-vocabulary path (estimator "full")


# ----------------------------------------------------------------------------------------------------------------
# Chunked projection through the LM head
# ----------------------------------------------------------------------------------------------------------------

def _fp(x):
    """At least float32 (float64 stays float64, for the gradient oracles)."""
    return x.astype(jnp.promote_types(x.dtype, F32))


def _stats_from_logits(logits, targets, support_ids):
    """Per-position statistics of fp32 logits [..., V]; the one place that turns logits into LogitStats."""
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - lse
    q = jnp.exp(logits - lse[..., None])
    entropy = lse - jnp.sum(q * logits, axis=-1)
    support_logp = None
    if support_ids is not None:
        gathered = jnp.take_along_axis(logits, jnp.maximum(support_ids, 0), axis=-1) - lse[..., None]
        support_logp = jnp.where(support_ids >= 0, gathered, -jnp.inf)
    return LogitStats(target_logp, support_logp, lse, entropy)


def chunked_logits_stats(hidden, unembed, targets, support_ids=None, *, chunk: int, mask=None,
                         sequence_shards: int = 1) -> LogitStats:
    """Student log q(target), log q(support ids), logsumexp and entropy, [B,T](,K), in T-chunks of `chunk`.

    hidden f32[B,T,D]; unembed [D,V]; targets i32[B,T]; support_ids i32[B,T,K] or None (-1 = no id). Only
    [B, chunk, V] logits are ever live, in the forward and (thanks to jax.checkpoint) the backward pass.
    """
    xs = (targets, support_ids)
    fn = lambda logits, x: tuple(_stats_from_logits(logits, x[0], x[1]))[:4]
    target_logp, support_logp, lse, entropy = map_logit_chunks(fn, hidden, unembed, xs, chunk=chunk, mask=mask,
                                                               sequence_shards=sequence_shards)
    return LogitStats(target_logp, support_logp, lse, entropy)


def logits_stats(logits, targets, support_ids=None) -> LogitStats:
    """The same statistics from dense logits [B,T,V] (small vocabularies and tests); also keeps the full log-probs."""
    logits = _fp(logits)
    stats = _stats_from_logits(logits, targets, support_ids)
    return stats._replace(logp=logits - stats.lse[..., None])


# ----------------------------------------------------------------------------------------------------------------
# Divergences
# ----------------------------------------------------------------------------------------------------------------

def log1mexp(x):
    """log(1 - exp(x)) for x <= 0, computed stably (Mächler 2012). x is clamped to <= -eps(dtype), so a support that
    holds all the mass gives a tail of log(eps) rather than -inf or NaN."""
    x = jnp.minimum(x, -jnp.finfo(x.dtype).eps)
    return jnp.where(x > -math.log(2.0), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def _masked_lse(x, valid):
    return jax.nn.logsumexp(jnp.where(valid, x, -jnp.inf), axis=-1)


def divergence(logq, logp, valid=None, *, direction: str = "reverse", beta: float = 1.0):
    """D(q, p) over the last axis of two (sub)distributions given as log-probs, summing only `valid` entries.

    reverse = KL(q||p) = Σ q (log q - log p); forward = KL(p||q); jsd = generalized JSD with M = (1-β) q + β p:
    β KL(p||M) + (1-β) KL(q||M) (GKD / TRL convention, where β=0 and β=1 are forward and reverse KL).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: expected one of {DIRECTIONS}")
    if valid is None:
        valid = jnp.ones(logq.shape, bool)
    # where-before-exp: invalid entries may hold -inf; they must not reach exp or the product (NaN gradients)
    logq, logp = jnp.where(valid, logq, 0.0), jnp.where(valid, logp, 0.0)

    def kl(loga, logb):  # KL(a||b) over the valid entries
        return jnp.sum(jnp.where(valid, jnp.exp(loga) * (loga - logb), 0.0), axis=-1)

    if direction == "jsd" and beta == 0.0:
        direction = "forward"
    if direction == "jsd" and beta == 1.0:
        direction = "reverse"
    if direction == "reverse":
        return kl(logq, logp)
    if direction == "forward":
        return kl(logp, logq)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta={beta}: expected a number in [0, 1]")
    logm = jnp.logaddexp(logq + math.log(1.0 - beta), logp + math.log(beta))
    return beta * kl(logp, logm) + (1.0 - beta) * kl(logq, logm)


def full_reverse_kl(student_logits, teacher_logits):
    """KL(q||p) per position over the whole vocabulary; logits [..., V] -> [...]. Small vocabularies only."""
    return divergence(jax.nn.log_softmax(_fp(student_logits)), jax.nn.log_softmax(_fp(teacher_logits)))


def full_forward_kl(student_logits, teacher_logits):
    """KL(p||q) per position over the whole vocabulary; logits [..., V] -> [...]."""
    return divergence(jax.nn.log_softmax(_fp(student_logits)), jax.nn.log_softmax(_fp(teacher_logits)),
                      direction="forward")


def generalized_jsd(student_logits, teacher_logits, beta: float):
    """GKD's generalized JSD per position; β=0 is forward KL, β=1 reverse KL, β=0.5 the symmetric JSD."""
    return divergence(jax.nn.log_softmax(_fp(student_logits)), jax.nn.log_softmax(_fp(teacher_logits)),
                      direction="jsd", beta=beta)


def salient_kl(support_logp, teacher: dict, *, direction: str = "reverse", beta: float = 1.0, mode: str = "tail"):
    """Divergence on the teacher's salient support (docs/spec/recipe.md §2.5.3), per position [B,T]; 0 where valid=0.

    support_logp [B,T,K]: student log q of teacher["topk_ids"] (from chunked_logits_stats, -inf at id -1).
    mode "tail": the distributions lumped to {support} ∪ {rest}: q_rest = 1 - Σ_S q, p_rest = exp(tail_logp). This is
    the divergence of a coarsening of q and p, so 0 <= salient <= full (data-processing inequality) and = full at K=V.
    mode "renorm": both restricted to the support and renormalised (thunlp / Tunix distill_top_k).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    teacher = clean_teacher(teacher)
    ok = teacher["topk_ids"] >= 0
    logq = jnp.where(ok, support_logp, -jnp.inf)
    logp = jnp.where(ok, _fp(teacher["topk_logp"]), -jnp.inf)
    if mode == "tail":
        floor = math.log(jnp.finfo(logq.dtype).eps)  # a tail of zero mass counts as eps: no 0·log 0 traps
        q_rest = jnp.maximum(log1mexp(_masked_lse(logq, ok)), floor)
        p_rest = jnp.maximum(teacher["tail_logp"].astype(logq.dtype), floor)
        logq = jnp.concatenate([logq, q_rest[..., None]], axis=-1)
        logp = jnp.concatenate([logp, p_rest[..., None]], axis=-1)
        ok = jnp.concatenate([ok, jnp.ones_like(ok[..., :1])], axis=-1)
    else:
        logq = logq - _masked_lse(logq, ok)[..., None]
        logp = logp - _masked_lse(logp, ok)[..., None]
    d = divergence(logq, logp, ok, direction=direction, beta=beta)
    return jnp.where(teacher["valid"] > 0, d, 0.0)


def clean_teacher(teacher: dict) -> dict:
    """Teacher targets with every value at valid=0 positions replaced by a harmless constant (ids -1, log-probs 0).

    A missing teacher may leave NaN or garbage behind; masking the loss alone is not enough, because 0 · NaN in the
    backward pass of the masked-out branch is still NaN."""
    ok = teacher["valid"] > 0
    out = dict(teacher, topk_ids=jnp.where(ok[..., None], teacher["topk_ids"], -1))
    for key in ("topk_logp", "logp"):
        if key in teacher:
            out[key] = jnp.where(ok[..., None], teacher[key], 0.0)
    for key in ("sampled_logp", "tail_logp"):
        out[key] = jnp.where(ok, teacher[key], 0.0)
    return out


def with_sampled_token(teacher: dict, targets) -> dict:
    """Adds the sampled target token to the support (K -> K+1) when it is not already in the teacher's top-k; its
    teacher mass moves from the tail into the support. Slot K is -1 when the target is already in the top-k."""
    ids, tail, s = teacher["topk_ids"], _fp(teacher["tail_logp"]), _fp(teacher["sampled_logp"])
    inside = jnp.any(ids == targets[..., None], axis=-1)
    finite = jnp.isfinite(tail) & jnp.isfinite(s)
    new_tail = jnp.where(finite, tail + log1mexp(jnp.where(finite, s - tail, -1.0)), tail)
    return dict(teacher,
                topk_ids=jnp.concatenate([ids, jnp.where(inside, -1, targets)[..., None]], axis=-1),
                topk_logp=jnp.concatenate([teacher["topk_logp"], s[..., None]], axis=-1),
                tail_logp=jnp.where(inside, tail, new_tail))


def importance_weights(target_logp, behavior_logp, *, is_low: float = 0.2, is_high: float = 5.0):
    """sg(π_θ/μ) for the sampled token, set to exactly 0 outside [is_low, is_high] (MOPD truncation)."""
    ratio = jnp.exp(jax.lax.stop_gradient(target_logp) - behavior_logp)
    return jnp.where((ratio >= is_low) & (ratio <= is_high), ratio, 0.0)


def sampled_token_opd(target_logp, teacher_sampled_logp, behavior_logp, mask=None, *, is_low: float = 0.2,
                      is_high: float = 5.0):
    """Per-token sampled-token OPD surrogate ℓ = -w · sg[log p_T - log q] · log q, and the weights w, [B,T] each.

    With w = q/μ its gradient is an unbiased estimate of ∇KL(q||p) at each position (docs/spec/recipe.md §2.5.1); tokens
    whose ratio leaves [is_low, is_high] contribute exactly 0. `mask` zeroes positions (tool outputs, padding).
    """
    w = importance_weights(target_logp, behavior_logp, is_low=is_low, is_high=is_high)
    if mask is not None:
        w = w * mask
    advantage = jax.lax.stop_gradient(teacher_sampled_logp - target_logp)
    return jnp.where(w > 0, -w * advantage * target_logp, 0.0), w


def policy_gradient_loss(target_logp, behavior_logp, advantages, *, loss_type: str = "ppo", eps_low: float = 0.2,
                         eps_high: float = 0.2, tis_cap: float = 2.0, ref_logp=None, kl_coef: float = 0.0):
    """Per-token GRPO loss [B,T] and per-token diagnostics, ratio r = π_θ/μ against the sampler's log-probs.

    "ppo": -min(r A, clip(r, 1-eps_low, 1+eps_high) A) (DAPO's decoupled clip). "tis": -sg(min(r, tis_cap)) A log π
    (truncated importance sampling). With ref_logp, adds kl_coef · k3(π_θ, π_ref) = e^(ref-logπ) - (ref-logπ) - 1.
    """
    log_ratio = target_logp - behavior_logp
    ratio = jnp.exp(log_ratio)
    if loss_type == "ppo":
        unclipped, clipped = ratio * advantages, jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
        loss = -jnp.minimum(unclipped, clipped)
        is_clipped = clipped < unclipped  # the min picks the clipped branch: this token gets no gradient
    elif loss_type == "tis":
        r = jax.lax.stop_gradient(ratio)
        loss = -jnp.minimum(r, tis_cap) * advantages * target_logp
        is_clipped = r > tis_cap
    else:
        raise ValueError(f"loss_type={loss_type!r}: expected 'ppo' or 'tis'")
    k3 = lambda d: jnp.exp(d) - d - 1.0  # d = log(other / π_θ)
    diag = {"clipped": is_clipped.astype(F32), "kl_behavior": jax.lax.stop_gradient(k3(-log_ratio))}
    if ref_logp is not None:
        kl = k3(ref_logp - target_logp)
        loss = loss + kl_coef * kl
        diag["kl_ref"] = jax.lax.stop_gradient(kl)
    return loss, diag


# ----------------------------------------------------------------------------------------------------------------
# Reductions (heterogeneity knobs)
# ----------------------------------------------------------------------------------------------------------------

def token_weights(mask, segment_ids, domain_ids, *, norm: str = "token", num_domains: int = 1,
                  domain_weights=None):
    """Per-token weights f32[B,T] that sum to 1 over the batch (0 if nothing is masked in).

    token: every supervised token counts the same. sequence: token-mean within each (row, segment), then the mean
    over segments. domain: token-mean within each domain, then the mean over the domains present, weighted by
    `domain_weights` [num_domains] (equal by default): a 2-token domain weighs as much as a 2000-token one.
    domain_ids must lie in [0, num_domains).
    """
    m = mask.astype(F32)
    if norm == "token":
        return m / jnp.maximum(jnp.sum(m), 1.0)
    if norm == "sequence":
        B, T = m.shape
        key = (jnp.arange(B)[:, None] * (T + 1) + segment_ids).reshape(-1)
        n_seg = jax.ops.segment_sum(m.reshape(-1), key, B * (T + 1))
        n_present = jnp.sum(n_seg > 0)
        return m / jnp.maximum(n_seg[key].reshape(B, T), 1.0) / jnp.maximum(n_present, 1)
    if norm == "domain":
        d = domain_ids.reshape(-1)
        n_dom = jax.ops.segment_sum(m.reshape(-1), d, num_domains)
        dw = jnp.ones((num_domains,), F32) if domain_weights is None else jnp.asarray(domain_weights, F32)
        total = jnp.sum(jnp.where(n_dom > 0, dw, 0.0))
        per_token = (dw / jnp.maximum(n_dom, 1.0) / jnp.where(total > 0, total, 1.0))[d].reshape(m.shape)
        return m * per_token
    raise ValueError(f"norm={norm!r}: expected one of {NORMS}")


def domain_sums(values, domain_ids, num_domains: int):
    """Σ over the tokens of each domain: [B,T] -> [num_domains]."""
    return jax.ops.segment_sum(values.reshape(-1), domain_ids.reshape(-1), num_domains)


def sft_loss(target_logp, loss_mask, segment_ids, domain_ids, *, norm: str = "token", num_domains: int = 1,
             domain_weights=None, weights=None):
    """Masked NLL reduced by `norm` (or by precomputed `weights`), and per-domain NLL sums/token counts."""
    if weights is None:
        weights = token_weights(loss_mask, segment_ids, domain_ids, norm=norm, num_domains=num_domains,
                                domain_weights=domain_weights)
    m = loss_mask.astype(F32)
    nll = jnp.where(m > 0, -target_logp, 0.0)
    metrics = {"nll_sum": jnp.sum(nll), "supervised_tokens": jnp.sum(m),
               "domain_nll_sum": domain_sums(nll, domain_ids, num_domains),
               "domain_tokens": domain_sums(m, domain_ids, num_domains)}
    return jnp.sum(weights * nll), metrics


def _per_token_distillation(stats: LogitStats, teacher: dict, target_logp, w_is, *, estimator, direction, beta,
                            mode, mix_weight):
    """(loss ℓ_t, KL estimate for logging) per token, before masking and weighting."""
    if estimator in ("salient", "mix"):
        analytic = salient_kl(stats.support_logp, teacher, direction=direction, beta=beta, mode=mode)
    elif estimator == "full":
        if stats.logp is None or "logp" not in teacher:
            raise ValueError("estimator='full' needs full student log-probs (LogitStats.logp) and teacher['logp']")
        analytic = divergence(stats.logp, _fp(teacher["logp"]), direction=direction, beta=beta)
    if estimator in ("sampled", "mix"):
        advantage = jax.lax.stop_gradient(teacher["sampled_logp"] - target_logp)
        sampled = jnp.where(w_is > 0, -w_is * advantage * target_logp, 0.0)
    if estimator == "sampled":
        return sampled, -advantage  # k1 = log q - log p_T
    if estimator == "mix":
        return (1.0 - mix_weight) * analytic + mix_weight * sampled, analytic
    return analytic, analytic


def multi_teacher_opd_loss(stats: LogitStats, teacher: dict, batch: dict, *, num_domains: int = 1,
                           estimator: str = "salient", direction: str = "reverse", beta: float = 1.0,
                           mode: str = "tail", mix_weight: float = 0.5, is_low: float = 0.2, is_high: float = 5.0,
                           norm: str = "domain", domain_weights=None, domain_weighting: str = "fixed",
                           kl_power: float = 1.0, sft_coef: float = 0.0, reward_coef: float = 0.0,
                           weights=None, sft_weights=None):
    """Domain-routed OPD loss (docs/spec/recipe.md §6.2) -> (scalar, metric sums).

    Per token: ℓ_t from `estimator` ("salient": analytic divergence on the teacher support; "sampled": the IS
    surrogate; "full": the full-vocab divergence, small V only; "mix": (1-mix_weight)·salient + mix_weight·sampled).
    Tokens count where loss_mask·valid > 0 and the IS ratio π_θ/μ lies in [is_low, is_high] (stale or mismatched
    samples are dropped for every estimator); where batch["off_policy"] > 0 (a teacher's own rollout) the weight
    is 1. Reduction by `norm` (or precomputed `weights`); with
    domain_weighting="kl" each domain's weight is further scaled by its detached mean KL ** kl_power (harder domains
    weigh more; within the batch, or within the microbatch when accumulating). Optional terms: sft_coef · NLL on
    batch["sft_mask"] (default loss_mask) and reward_coef · the outcome-reward policy gradient -w·A·log q on
    batch["advantages"] (MOPD's α·ORM).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator={estimator!r}: expected one of {ESTIMATORS}")
    if domain_weighting not in DOMAIN_WEIGHTINGS:
        raise ValueError(f"domain_weighting={domain_weighting!r}: expected one of {DOMAIN_WEIGHTINGS}")
    if "behavior_logp" not in batch:
        raise ValueError(f"multi_teacher_opd_loss needs batch['behavior_logp'] (the sampler's log-probs); the batch "
                         f"has {sorted(batch)}")
    teacher = clean_teacher(teacher)
    dom, seg = batch["domain_ids"], batch["segment_ids"]
    valid = teacher["valid"].astype(F32) > 0
    m = batch["loss_mask"].astype(F32) * valid
    w_is = importance_weights(stats.target_logp, batch["behavior_logp"], is_low=is_low, is_high=is_high) * m
    if "off_policy" in batch:  # the teachers' own rollouts (OPDOptions.policy="mix"): not the student's samples
        w_is = jnp.where(batch["off_policy"] > 0, m, w_is)
    kept = (w_is > 0).astype(F32)
    if weights is None:
        weights = token_weights(m, seg, dom, norm=norm, num_domains=num_domains, domain_weights=domain_weights)
    weights = weights * kept
    per_token, kl = _per_token_distillation(stats, teacher, stats.target_logp, w_is, estimator=estimator,
                                            direction=direction, beta=beta, mode=mode, mix_weight=mix_weight)
    per_token, kl = jnp.where(kept > 0, per_token, 0.0), jnp.where(kept > 0, kl, 0.0)
    dom_tokens = domain_sums(kept, dom, num_domains)
    dom_kl = domain_sums(jax.lax.stop_gradient(kl), dom, num_domains)
    if domain_weighting == "kl":
        mean_kl = dom_kl / jnp.maximum(dom_tokens, 1.0)
        scale = jnp.where(dom_tokens > 0, jnp.power(jnp.maximum(mean_kl, 0.0) + 1e-6, kl_power), 0.0)
        share = domain_sums(weights, dom, num_domains)  # each domain's weight under `norm`
        scale = scale * jnp.sum(share) / jnp.maximum(jnp.sum(share * scale), 1e-30)
        weights = weights * scale[dom]
    loss = jnp.sum(weights * per_token)
    if sft_coef:
        sft_mask = batch.get("sft_mask", batch["loss_mask"])
        sft, _ = sft_loss(stats.target_logp, sft_mask, seg, dom, norm="token", num_domains=num_domains,
                          weights=sft_weights)
        loss = loss + sft_coef * sft
    if reward_coef:
        pg = jnp.where(w_is > 0, -w_is * batch["advantages"] * stats.target_logp, 0.0)
        loss = loss + reward_coef * jnp.sum(weights * pg)
    nll = jnp.where(m > 0, -stats.target_logp, 0.0)
    q_rest = (jnp.zeros_like(kl) if stats.support_logp is None else
              1.0 - jnp.exp(_masked_lse(stats.support_logp, teacher["topk_ids"] >= 0)))
    sums = lambda x: domain_sums(jnp.where(kept > 0, jax.lax.stop_gradient(x), 0.0), dom, num_domains)
    metrics = {
        "kl_sum": jnp.sum(dom_kl), "distill_tokens": jnp.sum(kept), "masked_tokens": jnp.sum(m),
        "nll_sum": jnp.sum(nll), "supervised_tokens": jnp.sum(m),
        "domain_kl_sum": dom_kl, "domain_tokens": dom_tokens,
        "domain_masked_tokens": domain_sums(m, dom, num_domains),
        "domain_nll_sum": domain_sums(nll, dom, num_domains),
        "domain_tail_mass_sum": sums(jnp.exp(_fp(teacher["tail_logp"]))),
        "domain_student_tail_mass_sum": sums(q_rest),
        "domain_entropy_sum": sums(stats.entropy),
    }
    return loss, metrics


def finalize_opd_metrics(metrics: dict) -> dict:
    """Means from the sums of `multi_teacher_opd_loss` (after microbatch accumulation): per domain kl,
    is_nonzero_frac (tokens kept by the IS band / masked-in tokens), tail_mass, student_tail_mass, entropy."""
    out = dict(metrics)
    n = jnp.maximum(metrics["domain_tokens"], 1.0)
    out["kl"] = metrics["kl_sum"] / jnp.maximum(metrics["distill_tokens"], 1.0)
    out["is_nonzero_frac"] = metrics["distill_tokens"] / jnp.maximum(metrics["masked_tokens"], 1.0)
    out["domain_kl"] = metrics["domain_kl_sum"] / n
    out["domain_is_nonzero_frac"] = metrics["domain_tokens"] / jnp.maximum(metrics["domain_masked_tokens"], 1.0)
    out["domain_tail_mass"] = metrics["domain_tail_mass_sum"] / n
    out["domain_student_tail_mass"] = metrics["domain_student_tail_mass_sum"] / n
    out["domain_entropy"] = metrics["domain_entropy_sum"] / n
    return out
