"""HF `config.json` <-> `ModelConfig`.

`save_pretrained` writes only the fields that differ from the class defaults, so a missing field means the HF class
default (e.g. rope_theta 10000, not Qwen3.5's 1e7), never a1jax's. The defaults below are those of
`Qwen3_5MoeTextConfig` and `Qwen3_5TextConfig` in transformers 5.24 (docs/spec/model.md §1, §6).
"""
from __future__ import annotations

from typing import Any

from a1jax.model.config import ModelConfig

MOE_TEXT, DENSE_TEXT = "qwen3_5_moe_text", "qwen3_5_text"
_TOP_LEVEL = {"qwen3_5_moe": MOE_TEXT, "qwen3_5": DENSE_TEXT}  # VLM configs: the text model sits in `text_config`
ARCHITECTURES = {MOE_TEXT: "Qwen3_5MoeForCausalLM", DENSE_TEXT: "Qwen3_5ForCausalLM"}

_COMMON_DEFAULTS = dict(
    vocab_size=248320, max_position_embeddings=32768, initializer_range=0.02, rms_norm_eps=1e-6,
    tie_word_embeddings=False, head_dim=256, linear_conv_kernel_dim=4, linear_key_head_dim=128,
    linear_value_head_dim=128, linear_num_key_heads=16, linear_num_value_heads=32)
HF_DEFAULTS = {
    MOE_TEXT: {**_COMMON_DEFAULTS, "hidden_size": 2048, "num_hidden_layers": 40, "num_attention_heads": 16,
               "num_key_value_heads": 2, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
               "num_experts_per_tok": 8, "num_experts": 256, "router_aux_loss_coef": 0.001},
    DENSE_TEXT: {**_COMMON_DEFAULTS, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 32,
                 "num_attention_heads": 16, "num_key_value_heads": 4},
}
_HF_ROPE_THETA, _HF_PARTIAL_ROTARY = 10000.0, 0.25
# Fields copied verbatim between the two configs (same name, same meaning).
_SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "head_dim", "max_position_embeddings", "linear_num_key_heads", "linear_num_value_heads",
                  "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim", "rms_norm_eps",
                  "tie_word_embeddings", "initializer_range")
_MOE_FIELDS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
               "router_aux_loss_coef")
# Qwen3.5 configs list only <|endoftext|> as eos; generation_config stops on <|im_end|> too (docs/spec/model.md §5).
_QWEN_EOS = (248046, 248044)


def text_config(hf_config: dict) -> tuple[dict, str]:
    """(the text-model config dict, its model_type), from a text config or a full VLM config."""
    model_type = hf_config.get("model_type")
    if model_type in _TOP_LEVEL:
        text = dict(hf_config.get("text_config") or {})
        # The VLM ties its lm_head by the top-level flag (PreTrainedModel.tie_weights reads self.config).
        if "tie_word_embeddings" in hf_config:
            text["tie_word_embeddings"] = hf_config["tie_word_embeddings"]
        return text, text.get("model_type", _TOP_LEVEL[model_type])
    if model_type in HF_DEFAULTS:
        return dict(hf_config), model_type
    raise ValueError(f"unsupported HF model_type {model_type!r}; expected one of "
                     f"{sorted(HF_DEFAULTS) + sorted(_TOP_LEVEL)}")


def _rope(text: dict) -> tuple[float, float]:
    rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"rope_type {rope_type!r} is not supported (a1jax implements plain partial RoPE, "
                         "rope_type 'default')")
    theta = rope.get("rope_theta", text.get("rope_theta", _HF_ROPE_THETA))
    factor = rope.get("partial_rotary_factor", text.get("partial_rotary_factor", _HF_PARTIAL_ROTARY))
    return float(theta), float(factor)


def _eos(value) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return _QWEN_EOS if value in _QWEN_EOS else (value,)
    return tuple(int(v) for v in value)


def config_from_hf(hf_config: dict, *, mtp_layers: int, param_dtype: str) -> ModelConfig:
    """The ModelConfig of a HF config. `mtp_layers` counts the mtp.layers.* present in the weights (HF ignores MTP,
    so the config's own mtp_num_hidden_layers says nothing about the file); `param_dtype` is the weights' dtype."""
    text, model_type = text_config(hf_config)
    if model_type not in HF_DEFAULTS:
        raise ValueError(f"unsupported HF text model_type {model_type!r}; expected one of {sorted(HF_DEFAULTS)}")
    get = lambda k: text.get(k, HF_DEFAULTS[model_type].get(k))
    theta, factor = _rope(text)
    kw: dict[str, Any] = {k: get(k) for k in _SHARED_FIELDS}
    kw.update(rope_theta=theta, partial_rotary_factor=factor, mtp_num_hidden_layers=mtp_layers,
              dtype=param_dtype, param_dtype=param_dtype)
    if text.get("full_attention_interval") is not None:
        kw["full_attention_interval"] = int(text["full_attention_interval"])
    if text.get("layer_types"):  # takes precedence over the interval, as in HF
        kw["layer_types"] = tuple(text["layer_types"])
    if model_type == MOE_TEXT:
        kw.update({k: get(k) for k in _MOE_FIELDS})
        kw["intermediate_size"] = 0
    else:
        kw.update(intermediate_size=get("intermediate_size"), num_experts=0, num_experts_per_tok=0,
                  moe_intermediate_size=0, shared_expert_intermediate_size=0)
    if text.get("bos_token_id") is not None:
        kw["bos_token_id"] = int(text["bos_token_id"])
    if _eos(text.get("eos_token_id")) is not None:
        kw["eos_token_ids"] = _eos(text["eos_token_id"])
    return ModelConfig(**kw)


def config_to_hf(cfg: ModelConfig) -> dict:
    """A text config dict that `Qwen3_5MoeTextConfig` (or `Qwen3_5TextConfig` for dense models) loads; extra keys
    (mtp_*) are the hub's and are ignored by transformers."""
    model_type = MOE_TEXT if cfg.is_moe else DENSE_TEXT
    d: dict[str, Any] = {"architectures": [ARCHITECTURES[model_type]], "model_type": model_type}
    d.update({k: getattr(cfg, k) for k in _SHARED_FIELDS})
    d["layer_types"] = list(cfg.layer_types)
    if cfg.layer_types == cfg.replace(layer_types=()).layer_types:
        d["full_attention_interval"] = cfg.full_attention_interval
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_theta,
                            "partial_rotary_factor": cfg.partial_rotary_factor}
    d["partial_rotary_factor"] = cfg.partial_rotary_factor
    if cfg.is_moe:
        d.update({k: getattr(cfg, k) for k in _MOE_FIELDS})
    else:
        d["intermediate_size"] = cfg.intermediate_size
    d.update(hidden_act="silu", attention_bias=False, attention_dropout=0.0, bos_token_id=cfg.bos_token_id,
             eos_token_id=list(cfg.eos_token_ids), dtype=cfg.param_dtype)
    if cfg.mtp_num_hidden_layers:
        d.update(mtp_num_hidden_layers=cfg.mtp_num_hidden_layers, mtp_use_dedicated_embeddings=False)
    return d
