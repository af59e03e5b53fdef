"""Checkpoint conversion between Hugging Face Qwen3.5 (MoE and dense) and the a1jax parameter tree.

    from_hf(state_dict, hf_config) -> (cfg, params)     HF tensors + config.json dict -> ModelConfig, boxed params
    to_hf(cfg, params) -> (state_dict, hf_config)       the exact inverse (Qwen3_5MoeForCausalLM names)
    load_params(ckpt_dir) -> (cfg, params)              an orbax checkpoint written by `a1jax convert --from-hf`

The name table lives in layout.py, config translation in hf_config.py, directory I/O in checkpoint.py and the
torch-free safetensors format in safetensors.py.
"""
from a1jax.convert.checkpoint import load_params, read_hf_dir, save_params, write_hf_dir
from a1jax.convert.hf import from_hf, to_hf

__all__ = ["from_hf", "to_hf", "load_params", "save_params", "read_hf_dir", "write_hf_dir"]
