"""Cached decoding: prefill a prompt, then one token at a time.

The cache holds, per attention layer, K/V for `max_len` slots; per DeltaNet layer, the last K-1 conv inputs and the
fp32 recurrent state [B, Hv, dk, dv]; and globally the write index, the segment id of every slot (so left padding and
packed prompts stay masked) and the segment id of the last token (a new segment resets the DeltaNet state).
Cached decoding equals the full forward (tests/test_model.py).
"""
from __future__ import annotations

import jax.numpy as jnp

from a1jax.model.config import LINEAR, ModelConfig
from a1jax.model.deltanet import NO_SEGMENT
from a1jax.model.transformer import Output, forward


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> dict:
    dtype = jnp.dtype(dtype or cfg.dtype)
    nb, K = cfg.num_blocks, cfg.linear_conv_kernel_dim
    Hk, Hv, dk, dv = (cfg.linear_num_key_heads, cfg.linear_num_value_heads, cfg.linear_key_head_dim,
                      cfg.linear_value_head_dim)
    blocks = []
    for layer_type in cfg.block_pattern:
        if layer_type == LINEAR:
            blocks.append({
                "conv_q": jnp.zeros((nb, batch, K - 1, Hk, dk), dtype),
                "conv_k": jnp.zeros((nb, batch, K - 1, Hk, dk), dtype),
                "conv_v": jnp.zeros((nb, batch, K - 1, Hv, dv), dtype),
                "conv_segment_ids": jnp.full((nb, batch, K - 1), NO_SEGMENT, jnp.int32),
                "state": jnp.zeros((nb, batch, Hv, dk, dv), jnp.float32),
            })
        else:
            shape = (nb, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
            blocks.append({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)})
    return {"index": jnp.zeros((), jnp.int32), "segment_ids": jnp.zeros((batch, max_len), jnp.int32),
            "last_segment_ids": jnp.full((batch,), NO_SEGMENT, jnp.int32), "blocks": blocks}


def prefill(params, tokens, cfg: ModelConfig, cache: dict, *, positions=None, segment_ids=None,
            return_logits: bool | None = None) -> tuple[Output, dict]:
    """Appends a prompt [B,T] to the cache (left-padded rows: segment_ids 0 on the pads)."""
    out = forward(params, tokens, cfg, positions=positions, segment_ids=segment_ids, cache=cache,
                  return_logits=return_logits)
    return out, out.cache


def decode_step(params, tokens, cfg: ModelConfig, cache: dict, *, segment_ids=None) -> tuple[Output, dict]:
    """One token per row, tokens [B,1]; positions continue from the cache index."""
    out = forward(params, tokens, cfg, segment_ids=segment_ids, cache=cache, return_logits=True)
    return out, out.cache
