"""Generation engine and multi-turn agent rollouts (issue 8): sampler, tool-call parser, environments, rollout loop."""
from a1jax.rollout.engine import Engine
from a1jax.rollout.sampling import SamplingParams, apply_penalties, filter_logits, sample

__all__ = ["Engine", "SamplingParams", "apply_penalties", "filter_logits", "sample"]
