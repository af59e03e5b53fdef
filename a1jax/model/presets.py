"""Named model sizes. Values are from docs/spec/model.md §1 (hub config copies and slime scripts)."""
from __future__ import annotations

from a1jax.model.config import ModelConfig


def qwen35_35b_a3b(**overrides) -> ModelConfig:
    """Qwen3.5-35B-A3B, the Agents-A1 base: 40 layers (30 DeltaNet + 10 attention), 256 experts, top-8."""
    return ModelConfig(**{**dict(hidden_size=2048, num_hidden_layers=40, num_attention_heads=16,
                                 num_key_value_heads=2, linear_num_key_heads=16, linear_num_value_heads=32,
                                 num_experts=256, num_experts_per_tok=8, moe_intermediate_size=512,
                                 shared_expert_intermediate_size=512, mtp_num_hidden_layers=1), **overrides})


def qwen35_122b_a10b(**overrides) -> ModelConfig:
    return ModelConfig(**{**dict(hidden_size=3072, num_hidden_layers=48, num_attention_heads=32,
                                 num_key_value_heads=2, linear_num_key_heads=16, linear_num_value_heads=64,
                                 num_experts=256, num_experts_per_tok=8, moe_intermediate_size=1024,
                                 shared_expert_intermediate_size=1024, mtp_num_hidden_layers=1), **overrides})


def qwen35_397b_a17b(**overrides) -> ModelConfig:
    return ModelConfig(**{**dict(hidden_size=4096, num_hidden_layers=60, num_attention_heads=32,
                                 num_key_value_heads=2, linear_num_key_heads=16, linear_num_value_heads=64,
                                 num_experts=512, num_experts_per_tok=10, moe_intermediate_size=1024,
                                 shared_expert_intermediate_size=1024, mtp_num_hidden_layers=1), **overrides})


def _dense(layers, hidden, intermediate, heads, kv_heads, v_heads, tie, overrides) -> ModelConfig:
    return ModelConfig(**{**dict(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                                 num_attention_heads=heads, num_key_value_heads=kv_heads, linear_num_key_heads=16,
                                 linear_num_value_heads=v_heads, num_experts=0, num_experts_per_tok=0,
                                 shared_expert_intermediate_size=0, tie_word_embeddings=tie), **overrides})


def qwen35_0_8b(**overrides) -> ModelConfig:
    return _dense(24, 1024, 3584, 8, 2, 16, True, overrides)


def qwen35_4b(**overrides) -> ModelConfig:
    # tie_word_embeddings is not verified for 4B (docs/spec/model.md §1.2); the small dense models tie: we follow 0.8B.
    return _dense(32, 2560, 9216, 16, 4, 32, True, overrides)


def qwen35_9b(**overrides) -> ModelConfig:
    return _dense(32, 4096, 12288, 16, 4, 32, False, overrides)


def qwen35_27b(**overrides) -> ModelConfig:
    return _dense(64, 5120, 17408, 24, 4, 48, False, overrides)


def tiny(**overrides) -> ModelConfig:
    """A 4-layer MoE for CPU tests: dk != dv, two v-heads per qk-head, different expert and shared widths."""
    return ModelConfig(**{**dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=32, linear_num_key_heads=2,
                                 linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=24,
                                 num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                                 shared_expert_intermediate_size=48, max_position_embeddings=4096,
                                 rope_theta=10000.0, dtype="float32", param_dtype="float32",
                                 deltanet_chunk_size=16, loss_chunk_size=64), **overrides})


def tiny_dense(**overrides) -> ModelConfig:
    return tiny(**{**dict(num_experts=0, num_experts_per_tok=0, shared_expert_intermediate_size=0,
                          intermediate_size=96), **overrides})


PRESETS = {f.__name__: f for f in (qwen35_35b_a3b, qwen35_122b_a10b, qwen35_397b_a17b, qwen35_0_8b, qwen35_4b,
                                   qwen35_9b, qwen35_27b, tiny, tiny_dense)}


def get(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name](**overrides)
