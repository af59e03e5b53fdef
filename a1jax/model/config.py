"""Model configuration for Qwen3.5 (MoE and dense) text models.

Field names follow HF `Qwen3_5MoeTextConfig` so that a reader can match them to `config.json`; the extra fields at the
end (`dtype`, `scan_layers`, ...) are implementation choices of a1jax. See docs/spec/model.md §1.
"""
from __future__ import annotations

import dataclasses
from typing import Any

LINEAR = "linear_attention"
FULL = "full_attention"
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch", "save_mixer_out", "save_attention")
# Implementation switches. Kernel issues add their Pallas paths here and in the dispatch of the matching layer.
# "reference": plain softmax attention (a1jax/model/attention.py); "chunked"/"scan": kernels/reference/gated_delta_rule.py.
# The others go through kernels.attention.flash_attention / kernels.gdn.chunk_gated_delta_rule, like moe_impl.
ATTENTION_IMPLS = ("reference", "auto", "xla", "pallas_tpu", "pallas_gpu")
DELTANET_IMPLS = ("chunked", "scan", "auto", "xla", "pallas_tpu", "pallas_gpu")
# "ragged_dot": sort + jax.lax.ragged_dot (a1jax/model/moe.py), on CPU the tiled "xla_cpu" formulation instead
# (kernels.backend.xla_formulation); the others go through kernels.moe.routed_ffn:
# "auto" picks by platform (KERNELS_MOE_IMPL may override), the rest force one (kernels/backend.py).
RING_LOAD_BALANCE = ("zigzag", "none")
MOE_IMPLS = ("ragged_dot", "auto", "xla", "xla_cpu", "pallas_tpu", "pallas_gpu")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 248320
    hidden_size: int = 2048
    num_hidden_layers: int = 40
    layer_types: tuple[str, ...] = ()  # empty -> built from full_attention_interval
    full_attention_interval: int = 4
    # gated full attention
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    head_dim: int = 256
    partial_rotary_factor: float = 0.25
    rope_theta: float = 1e7
    max_position_embeddings: int = 262144
    # gated DeltaNet
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4
    # MoE (num_experts == 0 -> dense SwiGLU MLP of width intermediate_size)
    num_experts: int = 256
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 512
    shared_expert_intermediate_size: int = 512
    intermediate_size: int = 0
    router_aux_loss_coef: float = 0.001
    router_z_loss_coef: float = 0.0
    # misc
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    mtp_num_hidden_layers: int = 0
    mtp_loss_coef: float = 0.0
    bos_token_id: int = 248044
    eos_token_ids: tuple[int, ...] = (248046, 248044)
    # a1jax implementation choices
    dtype: str = "bfloat16"  # activations
    param_dtype: str = "bfloat16"
    scan_layers: bool = True
    remat_policy: str = "none"
    deltanet_chunk_size: int = 64
    loss_chunk_size: int = 1024  # positions per row in one step of the chunked vocabulary projection (losses.py)
    attention_impl: str = "reference"
    deltanet_impl: str = "chunked"
    moe_impl: str = "ragged_dot"
    # sequence parallelism: the token order full-attention rings use (zigzag evens out causal work; model/attention.py)
    ring_load_balance: str = "zigzag"
    # expert parallelism: tokens per shard sent through the all-to-all at a time (0 = all at once). The receive
    # buffer is sized for the worst case (every routed row to one shard), so it grows with this, not with seq_len.
    moe_token_chunk: int = 8192

    def __post_init__(self):
        if not self.layer_types:
            n = self.full_attention_interval
            if n <= 0:
                raise ValueError(f"full_attention_interval must be positive, got {n}")
            types = tuple(FULL if (i + 1) % n == 0 else LINEAR for i in range(self.num_hidden_layers))
            object.__setattr__(self, "layer_types", types)
        else:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "eos_token_ids", tuple(self.eos_token_ids))
        validate(self)

    # ---- derived sizes -------------------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def conv_dim(self) -> int:
        return 2 * self.linear_key_dim + self.linear_value_dim

    @property
    def block_pattern(self) -> tuple[str, ...]:
        """The shortest prefix of `layer_types` whose repetition gives all layers (scan-over-layers unit)."""
        types = self.layer_types
        for p in range(1, len(types) + 1):
            if len(types) % p == 0 and types == types[:p] * (len(types) // p):
                return types[:p]
        return types

    @property
    def num_blocks(self) -> int:
        return self.num_hidden_layers // len(self.block_pattern)

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**d)


def _req(cond: bool, msg: str):
    if not cond:
        raise ValueError(f"invalid ModelConfig: {msg}")


def validate(c: ModelConfig) -> None:
    """Checks every constraint up front so that errors name the field instead of surfacing as shape errors in XLA."""
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "head_dim", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                 "linear_value_head_dim", "linear_conv_kernel_dim", "deltanet_chunk_size", "loss_chunk_size"):
        _req(getattr(c, name) > 0, f"{name} must be positive, got {getattr(c, name)}")
    _req(len(c.layer_types) == c.num_hidden_layers,
         f"layer_types has {len(c.layer_types)} entries but num_hidden_layers={c.num_hidden_layers}")
    bad = sorted({t for t in c.layer_types if t not in (LINEAR, FULL)})
    _req(not bad, f"layer_types contains {bad}; allowed values are {LINEAR!r} and {FULL!r}")
    _req(c.num_attention_heads % c.num_key_value_heads == 0,
         f"num_attention_heads={c.num_attention_heads} must be a multiple of "
         f"num_key_value_heads={c.num_key_value_heads}")
    _req(c.linear_num_value_heads % c.linear_num_key_heads == 0,
         f"linear_num_value_heads={c.linear_num_value_heads} must be a multiple of "
         f"linear_num_key_heads={c.linear_num_key_heads}")
    _req(0.0 < c.partial_rotary_factor <= 1.0,
         f"partial_rotary_factor must lie in (0, 1], got {c.partial_rotary_factor}")
    _req(c.rotary_dim > 0 and c.rotary_dim % 2 == 0,
         f"the rotary dimension int(head_dim * partial_rotary_factor) = {c.rotary_dim} must be even and positive")
    _req(c.rope_theta > 0, f"rope_theta must be positive, got {c.rope_theta}")
    if c.is_moe:
        _req(0 < c.num_experts_per_tok <= c.num_experts,
             f"num_experts_per_tok={c.num_experts_per_tok} must lie in [1, num_experts={c.num_experts}]")
        _req(c.moe_intermediate_size > 0, f"moe_intermediate_size must be positive, got {c.moe_intermediate_size}")
        _req(c.shared_expert_intermediate_size >= 0, "shared_expert_intermediate_size must be >= 0")
    else:
        _req(c.num_experts == 0, f"num_experts must be >= 0, got {c.num_experts}")
        _req(c.intermediate_size > 0, "a dense model (num_experts=0) needs intermediate_size > 0")
    _req(c.mtp_num_hidden_layers >= 0, f"mtp_num_hidden_layers must be >= 0, got {c.mtp_num_hidden_layers}")
    _req(c.rms_norm_eps > 0, f"rms_norm_eps must be positive, got {c.rms_norm_eps}")
    for name in ("dtype", "param_dtype"):
        _req(getattr(c, name) in ("float32", "bfloat16", "float16"),
             f"{name} must be one of float32, bfloat16, float16; got {getattr(c, name)!r}")
    _req(c.remat_policy in REMAT_POLICIES, f"remat_policy must be one of {REMAT_POLICIES}, got {c.remat_policy!r}")
    for name, allowed in (("attention_impl", ATTENTION_IMPLS), ("deltanet_impl", DELTANET_IMPLS),
                          ("moe_impl", MOE_IMPLS)):
        _req(getattr(c, name) in allowed, f"{name} must be one of {allowed}, got {getattr(c, name)!r}")
    _req(c.moe_token_chunk >= 0, f"moe_token_chunk must be >= 0, got {c.moe_token_chunk}")
    _req(c.ring_load_balance in RING_LOAD_BALANCE,
         f"ring_load_balance must be one of {RING_LOAD_BALANCE}, got {c.ring_load_balance!r}")
    for name in ("router_aux_loss_coef", "router_z_loss_coef", "mtp_loss_coef"):
        _req(getattr(c, name) >= 0, f"{name} must be >= 0, got {getattr(c, name)}")
