"""Qwen3.5 (MoE and dense) as pure functions over a parameter pytree."""
from a1jax.model import presets
from a1jax.model.config import ModelConfig
from a1jax.model.decode import decode_step, init_cache, prefill
from a1jax.model.losses import map_logit_chunks, mtp_nll, token_logprobs
from a1jax.model.params import (Param, abstract_params, count_params, init, logical_axes, param_specs, unbox)
from a1jax.model.transformer import Output, forward, lm_head_weight, logits_from_hidden

__all__ = ["ModelConfig", "Output", "Param", "abstract_params", "count_params", "decode_step", "forward", "init",
           "init_cache", "lm_head_weight", "logical_axes", "logits_from_hidden", "map_logit_chunks", "mtp_nll",
           "param_specs", "prefill", "presets", "token_logprobs", "unbox"]
