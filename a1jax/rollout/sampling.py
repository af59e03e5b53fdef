"""Sampling controls for the generation engine: penalties, temperature, top-k / top-p / min-p, and the log-probs
on-policy distillation needs (under the sampling distribution, and at T = 1 without penalties).

`SamplingParams` is static (hashed into the jitted decode loop): changing it recompiles, changing prompts does not.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Defaults are the Agents-A1 recommendation. temperature 0 means greedy (argmax after penalties).

    presence_penalty: subtracted once from every token already generated in this call (OpenAI / vLLM definition).
    repetition_penalty: CTRL-style, on every token of the context or the output: a positive logit is divided by it,
      a negative one multiplied (HF / vLLM definition). 1.0 disables it.
    top_k 0, top_p 1.0 and min_p 0.0 disable those filters.
    """
    temperature: float = 0.85
    top_p: float = 0.95
    top_k: int = 20
    min_p: float = 0.0
    presence_penalty: float = 1.1
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0.0 <= self.min_p < 1.0:
            raise ValueError(f"min_p={self.min_p} must be in [0, 1)")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")

    @classmethod
    def greedy(cls) -> "SamplingParams":
        return cls(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, presence_penalty=0.0, repetition_penalty=1.0)


def apply_penalties(logits, generated, context, sp: SamplingParams):
    """logits [B,V] fp32; generated / context [B,V] bool (tokens output so far / in prompt or output)."""
    if sp.presence_penalty:
        logits = logits - sp.presence_penalty * generated.astype(logits.dtype)
    if sp.repetition_penalty != 1.0:
        r = sp.repetition_penalty
        logits = jnp.where(context, jnp.where(logits > 0, logits / r, logits * r), logits)
    return logits


def filter_logits(logits, sp: SamplingParams):
    """-inf outside the kept set: top-k, then top-p of the renormalised rest, then min-p (p >= min_p * p_max).

    Works on the k largest values only (a full sort when top_k is off); the kept set is every logit >= the smallest
    kept value, so ties at the threshold are kept together, as a sort-based reference would be ambiguous about them.
    """
    V = logits.shape[-1]
    k = sp.top_k if 0 < sp.top_k < V else V
    if k == V and sp.top_p >= 1.0 and sp.min_p == 0.0:
        return logits
    vals = jax.lax.top_k(logits, k)[0]  # [B,k] descending
    probs = jax.nn.softmax(vals, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each candidate
    kept = before < sp.top_p  # the first candidate always stays
    kept &= probs >= sp.min_p * probs[..., :1]
    threshold = jnp.min(jnp.where(kept, vals, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, NEG_INF)


def sample(key, logits, generated, context, sp: SamplingParams):
    """One token per row from raw logits [B,V]. Returns (tokens [B], logp under the sampling distribution [B],
    logp at T = 1 without penalties or filters [B]). Greedy rows have sampling log-prob 0 (a point mass)."""
    logits = logits.astype(jnp.float32)
    logp_t1_all = jax.nn.log_softmax(logits, axis=-1)
    shaped = apply_penalties(logits, generated, context, sp)
    if sp.temperature == 0.0:
        tokens = jnp.argmax(shaped, axis=-1)
        logp = jnp.zeros(tokens.shape, jnp.float32)
    else:
        shaped = filter_logits(shaped / sp.temperature, sp)
        tokens = jax.random.categorical(key, shaped, axis=-1)
        logp = jnp.take_along_axis(jax.nn.log_softmax(shaped, axis=-1), tokens[:, None], axis=-1)[:, 0]
    logp_t1 = jnp.take_along_axis(logp_t1_all, tokens[:, None], axis=-1)[:, 0]
    return tokens.astype(jnp.int32), logp, logp_t1
