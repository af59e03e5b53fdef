"""The parameter pytree: its layout, logical axis names, initialisation and parameter counts.

Layout (JAX convention: a matrix maps [in] -> [out], the transpose of PyTorch's [out, in]):

    embed                      [V, H]
    lm_head                    [H, V]           absent when tie_word_embeddings
    final_norm                 [H]              RMSNorm1p (stored as an offset from 1)
    blocks[p]                  one layer tree per position p of cfg.block_pattern, every leaf stacked over
                               cfg.num_blocks on a leading "layers" axis (the unit of scan-over-layers).
    mtp                        only when cfg.mtp_num_hidden_layers > 0: pre_fc_norm_embedding, pre_fc_norm_hidden [H],
                               fc [2H, H] (rows: embedding first, then hidden), layers[i] (full-attention layer
                               trees, unstacked), norm [H].

A layer tree is {input_norm [H], post_norm [H], mixer, mlp} where mixer is one of

    linear_attn (Gated DeltaNet): in_proj_q [H,Hk,dk], in_proj_k [H,Hk,dk], in_proj_v [H,Hv,dv], in_proj_z [H,Hv,dv],
        in_proj_b [H,Hv], in_proj_a [H,Hv], conv_q [K,Hk,dk], conv_k [K,Hk,dk], conv_v [K,Hv,dv], dt_bias [Hv],
        A_log [Hv], norm [dv] (plain weight), out_proj [Hv,dv,H]
    self_attn (gated attention): q_proj [H,nh,2D] (per head: D query columns then D gate columns, as HF interleaves
        them), k_proj [H,nkv,D], v_proj [H,nkv,D], o_proj [nh,D,H], q_norm [D], k_norm [D]

and mlp is either MoE {router [H,E], experts_gate_up [E,H,2I] (gate columns first), experts_down [E,I,H],
shared_gate_proj [H,Is], shared_up_proj [H,Is], shared_down_proj [Is,H], shared_expert_gate [H,1]} or dense
{gate_proj [H,I], up_proj [H,I], down_proj [I,H]}.

HF fuses the DeltaNet q|k|v projection and conv; we keep them apart so that the `tensor` mesh axis can shard heads of
each (a contiguous split of the fused [q|k|v] axis would not follow heads). The converter splits and joins exactly.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from a1jax.model.config import FULL, LINEAR, ModelConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Param:
    """A parameter leaf with its logical axis names (static metadata, so tree maps keep them)."""
    value: Any
    axes: tuple = dataclasses.field(metadata=dict(static=True), default=())


def is_param(x) -> bool:
    return isinstance(x, Param)


def unbox(tree):
    """Strips `Param` boxes; plain arrays pass through."""
    return jax.tree.map(lambda p: p.value if is_param(p) else p, tree, is_leaf=is_param)


def logical_axes(tree):
    """The tree of logical axis-name tuples, one per parameter."""
    return jax.tree.map(lambda p: p.axes, tree, is_leaf=is_param)


def box_like(values, boxed):
    """Re-attaches the axis names of `boxed` to a plain tree of the same structure."""
    return jax.tree.map(lambda p, v: Param(v, p.axes), boxed, values, is_leaf=is_param)


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    init: str  # "normal", "zeros", "ones", "a_log", "conv"
    dtype: str | None = None  # None -> cfg.param_dtype


def _norm(n):
    return ParamSpec((n,), ("norm",), "zeros")


def _linear_attn_specs(c: ModelConfig) -> dict:
    H, Hk, Hv, dk, dv, K = (c.hidden_size, c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim,
                            c.linear_value_head_dim, c.linear_conv_kernel_dim)
    return {
        "in_proj_q": ParamSpec((H, Hk, dk), ("embed", "lin_qk_heads", "lin_head_dim"), "normal"),
        "in_proj_k": ParamSpec((H, Hk, dk), ("embed", "lin_qk_heads", "lin_head_dim"), "normal"),
        "in_proj_v": ParamSpec((H, Hv, dv), ("embed", "lin_v_heads", "lin_head_dim"), "normal"),
        "in_proj_z": ParamSpec((H, Hv, dv), ("embed", "lin_v_heads", "lin_head_dim"), "normal"),
        "in_proj_b": ParamSpec((H, Hv), ("embed", "lin_v_heads"), "normal"),
        "in_proj_a": ParamSpec((H, Hv), ("embed", "lin_v_heads"), "normal"),
        "conv_q": ParamSpec((K, Hk, dk), ("conv_kernel", "lin_qk_heads", "lin_head_dim"), "conv"),
        "conv_k": ParamSpec((K, Hk, dk), ("conv_kernel", "lin_qk_heads", "lin_head_dim"), "conv"),
        "conv_v": ParamSpec((K, Hv, dv), ("conv_kernel", "lin_v_heads", "lin_head_dim"), "conv"),
        "dt_bias": ParamSpec((Hv,), ("lin_v_heads",), "ones", "float32"),
        "A_log": ParamSpec((Hv,), ("lin_v_heads",), "a_log", "float32"),
        "norm": ParamSpec((dv,), ("norm",), "ones"),
        "out_proj": ParamSpec((Hv, dv, H), ("lin_v_heads", "lin_head_dim", "embed"), "normal"),
    }


def _attn_specs(c: ModelConfig) -> dict:
    H, nh, nkv, D = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    return {
        "q_proj": ParamSpec((H, nh, 2 * D), ("embed", "q_heads", "head_dim"), "normal"),
        "k_proj": ParamSpec((H, nkv, D), ("embed", "kv_heads", "head_dim"), "normal"),
        "v_proj": ParamSpec((H, nkv, D), ("embed", "kv_heads", "head_dim"), "normal"),
        "o_proj": ParamSpec((nh, D, H), ("q_heads", "head_dim", "embed"), "normal"),
        "q_norm": _norm(D),
        "k_norm": _norm(D),
    }


def _mlp_specs(c: ModelConfig) -> dict:
    H = c.hidden_size
    if not c.is_moe:
        I = c.intermediate_size
        return {"gate_proj": ParamSpec((H, I), ("embed", "mlp"), "normal"),
                "up_proj": ParamSpec((H, I), ("embed", "mlp"), "normal"),
                "down_proj": ParamSpec((I, H), ("mlp", "embed"), "normal")}
    E, I, Is = c.num_experts, c.moe_intermediate_size, c.shared_expert_intermediate_size
    specs = {
        "router": ParamSpec((H, E), ("embed", "router_experts"), "normal"),
        "experts_gate_up": ParamSpec((E, H, 2 * I), ("experts", "expert_embed", "expert_mlp"), "normal"),
        "experts_down": ParamSpec((E, I, H), ("experts", "expert_mlp", "expert_embed"), "normal"),
    }
    if Is > 0:
        specs.update({
            "shared_gate_proj": ParamSpec((H, Is), ("embed", "mlp"), "normal"),
            "shared_up_proj": ParamSpec((H, Is), ("embed", "mlp"), "normal"),
            "shared_down_proj": ParamSpec((Is, H), ("mlp", "embed"), "normal"),
            "shared_expert_gate": ParamSpec((H, 1), ("embed", None), "normal"),
        })
    return specs


def layer_specs(c: ModelConfig, layer_type: str) -> dict:
    mixer = ("linear_attn", _linear_attn_specs(c)) if layer_type == LINEAR else ("self_attn", _attn_specs(c))
    return {"input_norm": _norm(c.hidden_size), "post_norm": _norm(c.hidden_size), mixer[0]: mixer[1],
            "mlp": _mlp_specs(c)}


def _stack(spec: ParamSpec, n: int) -> ParamSpec:
    return dataclasses.replace(spec, shape=(n, *spec.shape), axes=("layers", *spec.axes))


def param_specs(c: ModelConfig, *, include_mtp: bool = True) -> dict:
    H, V = c.hidden_size, c.vocab_size
    is_spec = lambda x: isinstance(x, ParamSpec)
    specs: dict[str, Any] = {"embed": ParamSpec((V, H), ("vocab", "embed"), "normal")}
    if not c.tie_word_embeddings:
        specs["lm_head"] = ParamSpec((H, V), ("embed", "vocab"), "normal")
    specs["final_norm"] = _norm(H)
    specs["blocks"] = [jax.tree.map(lambda s: _stack(s, c.num_blocks), layer_specs(c, t), is_leaf=is_spec)
                       for t in c.block_pattern]
    if include_mtp and c.mtp_num_hidden_layers > 0:
        specs["mtp"] = {
            "pre_fc_norm_embedding": _norm(H), "pre_fc_norm_hidden": _norm(H),
            "fc": ParamSpec((2 * H, H), ("mtp_fc_in", "embed"), "normal"),
            "layers": [layer_specs(c, FULL) for _ in range(c.mtp_num_hidden_layers)],
            "norm": _norm(H),
        }
    return specs


def _init_leaf(spec: ParamSpec, key, c: ModelConfig):
    dtype = jnp.dtype(spec.dtype or c.param_dtype)
    if spec.init == "normal":
        v = c.initializer_range * jax.random.normal(key, spec.shape, jnp.float32)
    elif spec.init == "zeros":
        v = jnp.zeros(spec.shape, jnp.float32)
    elif spec.init == "ones":
        v = jnp.ones(spec.shape, jnp.float32)
    elif spec.init == "a_log":  # HF: A ~ U(0, 16), A_log = log(A); we keep A away from 0
        v = jnp.log(jax.random.uniform(key, spec.shape, jnp.float32, 0.01, 16.0))
    elif spec.init == "conv":  # PyTorch's default for a depthwise conv: U(-1/sqrt(K), 1/sqrt(K))
        bound = 1.0 / math.sqrt(spec.shape[-3] if len(spec.shape) >= 3 else spec.shape[0])
        v = jax.random.uniform(key, spec.shape, jnp.float32, -bound, bound)
    else:
        raise ValueError(f"unknown init {spec.init!r}")
    return Param(v.astype(dtype), spec.axes)


def init(cfg: ModelConfig, rng, *, include_mtp: bool = True) -> dict:
    """Initialises parameters. Every leaf is a `Param` carrying its logical axis names; `unbox` strips them."""
    specs = param_specs(cfg, include_mtp=include_mtp)
    leaves, treedef = jax.tree.flatten(specs, is_leaf=lambda x: isinstance(x, ParamSpec))
    keys = jax.random.split(rng, len(leaves))
    return jax.tree.unflatten(treedef, [_init_leaf(s, k, cfg) for s, k in zip(leaves, keys)])


def abstract_params(cfg: ModelConfig, *, include_mtp: bool = True):
    """Shapes and dtypes of `init(cfg, rng)` without allocating anything."""
    return jax.eval_shape(lambda: init(cfg, jax.random.key(0), include_mtp=include_mtp))


def spec_size(tree) -> int:
    """Number of parameters in a tree of ParamSpecs."""
    return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, ParamSpec)))


def inactive_expert_params(cfg: ModelConfig, num_layers: int) -> int:
    """Routed-expert parameters of `num_layers` MoE layers that a token does not use (all but its top-k experts)."""
    if not cfg.is_moe:
        return 0
    return num_layers * (cfg.num_experts - cfg.num_experts_per_tok) * 3 * cfg.hidden_size * cfg.moe_intermediate_size


def count_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, active per token) for the text model without MTP; active counts the embedding and top-k experts."""
    total = spec_size(param_specs(cfg, include_mtp=False))
    return total, total - inactive_expert_params(cfg, cfg.num_hidden_layers)


def layout_summary(cfg: ModelConfig) -> str:
    """Human-readable per-layer layout and parameter counts (the `a1jax summary` output)."""
    total, active = count_params(cfg)
    specs = param_specs(cfg)
    lines = [f"layers: {cfg.num_hidden_layers} = {cfg.num_blocks} x {list(cfg.block_pattern)}",
             f"hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, "
             + (f"MoE {cfg.num_experts} experts top-{cfg.num_experts_per_tok} (width {cfg.moe_intermediate_size}, "
                f"shared {cfg.shared_expert_intermediate_size})" if cfg.is_moe
                else f"dense SwiGLU width {cfg.intermediate_size}")]
    for i, t in enumerate(cfg.layer_types):
        p = specs["blocks"][i % len(cfg.block_pattern)]
        mixer = spec_size(p.get("linear_attn", p.get("self_attn"))) // cfg.num_blocks
        mlp = spec_size(p["mlp"]) // cfg.num_blocks
        lines.append(f"  layer {i:3d}  {'DeltaNet ' if t == LINEAR else 'attention'}  mixer {mixer:>14,}  "
                     f"{'moe' if cfg.is_moe else 'mlp'} {mlp:>16,}")
    if "mtp" in specs:
        lines.append(f"MTP module ({cfg.mtp_num_hidden_layers} layer): {spec_size(specs['mtp']):,}")
    lines.append(f"total (text, no MTP): {total:,}")
    lines.append(f"active per token (incl. embedding): {active:,}")
    return "\n".join(lines)
