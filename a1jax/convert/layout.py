"""The name table between HF `Qwen3_5MoeForCausalLM` tensors and the a1jax parameter tree.

Every HF tensor is an `HfTensor`: its canonical name (prefix `model.`, `lm_head.` or `mtp.`), its HF shape, and the
`Piece`s of a1jax leaves it is made of. A piece names a leaf by its tree path, the part of that leaf it fills (layer
index in the stack, expert, column range) and the rows of the HF tensor it covers (HF fuses q|k|v along rows).

Transforms (`kind`), HF -> a1jax; each is undone exactly by `piece_to_hf`:
    copy     same values, reshaped (norms, A_log, dt_bias, embed_tokens)
    matrix   PyTorch [out, in] -> [in, out], then the out (or in) axis split into heads
    conv     depthwise conv1d [channels, 1, K] -> [K, heads, dim]
    experts  fused experts [E, out, in] -> [E, in, out]
Names follow docs/spec/model.md §3.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from a1jax.model.config import LINEAR, ModelConfig

_ALL = slice(None)


@dataclasses.dataclass(frozen=True)
class Piece:
    path: tuple            # into the params tree, e.g. ("blocks", 3, "self_attn", "q_proj")
    index: tuple           # into that leaf: (stack index, [expert, column slice]); () = the whole leaf
    kind: str              # "copy" | "matrix" | "conv" | "experts"
    rows: slice = _ALL     # rows of the HF tensor this piece covers


@dataclasses.dataclass(frozen=True)
class HfTensor:
    name: str
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]
    fused: str | None = None  # per-expert tensors: the fused HF tensor they are a part of


def piece_to_jax(kind: str, x: np.ndarray, slab_shape: tuple) -> np.ndarray:
    """The HF rows of one piece -> the slab of the a1jax leaf it fills (a view where numpy allows)."""
    if kind == "copy":
        return x.reshape(slab_shape)
    if kind == "matrix":
        return x.T.reshape(slab_shape)
    if kind == "conv":
        return x[:, 0, :].T.reshape(slab_shape)
    if kind == "experts":
        return x.transpose(0, 2, 1).reshape(slab_shape)
    raise ValueError(f"unknown transform {kind!r}")


def piece_to_hf(kind: str, slab: np.ndarray, hf_shape: tuple) -> np.ndarray:
    """Inverse of `piece_to_jax`: a slab of an a1jax leaf -> the HF rows it came from."""
    if kind == "copy":
        return slab.reshape(hf_shape)
    if kind == "matrix":
        return slab.reshape(hf_shape[::-1]).T
    if kind == "conv":
        return slab.reshape(hf_shape[2], hf_shape[0]).T[:, None, :]
    if kind == "experts":
        return slab.transpose(0, 2, 1)
    raise ValueError(f"unknown transform {kind!r}")


def _one(name, shape, path, index=(), kind="copy", fused=None) -> HfTensor:
    return HfTensor(name, tuple(shape), (Piece(tuple(path), tuple(index), kind),), fused)


def _split_rows(name, shape, path, index, kind, parts) -> HfTensor:
    """A tensor whose rows are the concatenation of several leaves: [(leaf name, rows), ...]."""
    pieces, start = [], 0
    for leaf, n in parts:
        pieces.append(Piece((*path, leaf), index, kind, slice(start, start + n)))
        start += n
    return HfTensor(name, tuple(shape), tuple(pieces))


def _linear_attn(c: ModelConfig, pre: str, path: tuple, idx: tuple) -> list[HfTensor]:
    H, Hv, dv, K = c.hidden_size, c.linear_num_value_heads, c.linear_value_head_dim, c.linear_conv_kernel_dim
    kd, vd, p = c.linear_key_dim, c.linear_value_dim, (*path, "linear_attn")
    qkv = [("in_proj_q", kd), ("in_proj_k", kd), ("in_proj_v", vd)]
    conv = [("conv_q", kd), ("conv_k", kd), ("conv_v", vd)]
    return [
        _split_rows(f"{pre}linear_attn.in_proj_qkv.weight", (c.conv_dim, H), p, idx, "matrix", qkv),
        _one(f"{pre}linear_attn.in_proj_z.weight", (vd, H), (*p, "in_proj_z"), idx, "matrix"),
        _one(f"{pre}linear_attn.in_proj_b.weight", (Hv, H), (*p, "in_proj_b"), idx, "matrix"),
        _one(f"{pre}linear_attn.in_proj_a.weight", (Hv, H), (*p, "in_proj_a"), idx, "matrix"),
        _split_rows(f"{pre}linear_attn.conv1d.weight", (c.conv_dim, 1, K), p, idx, "conv", conv),
        _one(f"{pre}linear_attn.dt_bias", (Hv,), (*p, "dt_bias"), idx),
        _one(f"{pre}linear_attn.A_log", (Hv,), (*p, "A_log"), idx),
        _one(f"{pre}linear_attn.norm.weight", (dv,), (*p, "norm"), idx),
        _one(f"{pre}linear_attn.out_proj.weight", (H, vd), (*p, "out_proj"), idx, "matrix"),
    ]


def _self_attn(c: ModelConfig, pre: str, path: tuple, idx: tuple) -> list[HfTensor]:
    H, nh, nkv, D, p = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, (*path, "self_attn")
    return [
        _one(f"{pre}self_attn.q_proj.weight", (nh * 2 * D, H), (*p, "q_proj"), idx, "matrix"),
        _one(f"{pre}self_attn.k_proj.weight", (nkv * D, H), (*p, "k_proj"), idx, "matrix"),
        _one(f"{pre}self_attn.v_proj.weight", (nkv * D, H), (*p, "v_proj"), idx, "matrix"),
        _one(f"{pre}self_attn.o_proj.weight", (H, nh * D), (*p, "o_proj"), idx, "matrix"),
        _one(f"{pre}self_attn.q_norm.weight", (D,), (*p, "q_norm"), idx),
        _one(f"{pre}self_attn.k_norm.weight", (D,), (*p, "k_norm"), idx),
    ]


def _mlp(c: ModelConfig, pre: str, path: tuple, idx: tuple) -> list[HfTensor]:
    H, p = c.hidden_size, (*path, "mlp")
    if not c.is_moe:
        I = c.intermediate_size
        return [_one(f"{pre}mlp.gate_proj.weight", (I, H), (*p, "gate_proj"), idx, "matrix"),
                _one(f"{pre}mlp.up_proj.weight", (I, H), (*p, "up_proj"), idx, "matrix"),
                _one(f"{pre}mlp.down_proj.weight", (H, I), (*p, "down_proj"), idx, "matrix")]
    E, I, Is = c.num_experts, c.moe_intermediate_size, c.shared_expert_intermediate_size
    out = [_one(f"{pre}mlp.gate.weight", (E, H), (*p, "router"), idx, "matrix"),
           _one(f"{pre}mlp.experts.gate_up_proj", (E, 2 * I, H), (*p, "experts_gate_up"), idx, "experts"),
           _one(f"{pre}mlp.experts.down_proj", (E, H, I), (*p, "experts_down"), idx, "experts")]
    if Is > 0:
        s = f"{pre}mlp.shared_expert."
        out += [_one(f"{s}gate_proj.weight", (Is, H), (*p, "shared_gate_proj"), idx, "matrix"),
                _one(f"{s}up_proj.weight", (Is, H), (*p, "shared_up_proj"), idx, "matrix"),
                _one(f"{s}down_proj.weight", (H, Is), (*p, "shared_down_proj"), idx, "matrix"),
                _one(f"{pre}mlp.shared_expert_gate.weight", (1, H), (*p, "shared_expert_gate"), idx, "matrix")]
    return out


def _per_expert(c: ModelConfig, pre: str, path: tuple, idx: tuple) -> list[HfTensor]:
    """The unfused spelling of the routed experts (hub MTP layers, older exports): qwen2_moe's rule in reverse."""
    H, I, p = c.hidden_size, c.moe_intermediate_size, (*path, "mlp")
    gate_up, down = f"{pre}mlp.experts.gate_up_proj", f"{pre}mlp.experts.down_proj"
    out = []
    for e in range(c.num_experts):
        x = f"{pre}mlp.experts.{e}."
        out += [_one(f"{x}gate_proj.weight", (I, H), (*p, "experts_gate_up"), (*idx, e, _ALL, slice(0, I)),
                     "matrix", gate_up),
                _one(f"{x}up_proj.weight", (I, H), (*p, "experts_gate_up"), (*idx, e, _ALL, slice(I, 2 * I)),
                     "matrix", gate_up),
                _one(f"{x}down_proj.weight", (H, I), (*p, "experts_down"), (*idx, e), "matrix", down)]
    return out


def _layer(c: ModelConfig, layer_type: str, pre: str, path: tuple, idx: tuple) -> list[HfTensor]:
    H = c.hidden_size
    mixer = _linear_attn if layer_type == LINEAR else _self_attn
    return [*mixer(c, pre, path, idx), *_mlp(c, pre, path, idx),
            _one(f"{pre}input_layernorm.weight", (H,), (*path, "input_norm"), idx),
            _one(f"{pre}post_attention_layernorm.weight", (H,), (*path, "post_norm"), idx)]


def _layer_sites(c: ModelConfig) -> Iterator[tuple[str, str, tuple, tuple]]:
    """(layer type, HF prefix, params path, index) for every decoder layer, main stack then MTP."""
    P = len(c.block_pattern)
    for i, t in enumerate(c.layer_types):
        yield t, f"model.layers.{i}.", ("blocks", i % P), (i // P,)  # layer i = block i//P, position i%P
    for i in range(c.mtp_num_hidden_layers):
        yield "full_attention", f"mtp.layers.{i}.", ("mtp", "layers", i), ()


def hf_layout(c: ModelConfig) -> list[HfTensor]:
    """Every tensor of the HF checkpoint, in the order of HF's state_dict, then MTP (experts fused)."""
    H, V = c.hidden_size, c.vocab_size
    out = [_one("model.embed_tokens.weight", (V, H), ("embed",))]
    sites = list(_layer_sites(c))
    for t, pre, path, idx in sites[:c.num_hidden_layers]:
        out += _layer(c, t, pre, path, idx)
    out.append(_one("model.norm.weight", (H,), ("final_norm",)))
    if not c.tie_word_embeddings:
        out.append(_one("lm_head.weight", (V, H), ("lm_head",), (), "matrix"))
    if c.mtp_num_hidden_layers:
        out += [_one("mtp.fc.weight", (H, 2 * H), ("mtp", "fc"), (), "matrix"),
                _one("mtp.pre_fc_norm_embedding.weight", (H,), ("mtp", "pre_fc_norm_embedding")),
                _one("mtp.pre_fc_norm_hidden.weight", (H,), ("mtp", "pre_fc_norm_hidden")),
                _one("mtp.norm.weight", (H,), ("mtp", "norm"))]
        for t, pre, path, idx in sites[c.num_hidden_layers:]:
            out += _layer(c, t, pre, path, idx)
    return out


def per_expert_layout(c: ModelConfig) -> list[HfTensor]:
    """The per-expert tensors that may stand in for each layer's fused gate_up_proj / down_proj."""
    if not c.is_moe:
        return []
    return [t for _, pre, path, idx in _layer_sites(c) for t in _per_expert(c, pre, path, idx)]
