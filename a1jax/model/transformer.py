"""The Qwen3.5 decoder: embedding, the repeating [DeltaNet x3, attention] blocks, final norm, LM head, MTP.

`forward` is a pure function of (params, tokens, cfg). Layers are stored stacked per position of the block pattern
(see params.py), so the same tree runs as a `lax.scan` over blocks (fast compiles for 40-60 layers) or as a Python
loop, and `remat_policy` wraps each layer in `jax.checkpoint`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from a1jax.model import moe
from a1jax.model.attention import gated_attention
from a1jax.model.config import LINEAR, ModelConfig
from a1jax.model.deltanet import gated_deltanet
from a1jax.model.layers import rms_norm_1p
from a1jax.model.parallel import Parallel, constrain_tokens
from a1jax.model.params import unbox
from kernels.attention import flash

F32 = jnp.float32
AUTO_LOGITS_MAX_ELEMENTS = 1 << 26  # beyond this, `forward` returns hidden states only (see losses.py)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Output:
    logits: Any  # [B,T,V] fp32, or None for long inputs
    hidden: Any  # [B,T,H] final hidden states after the final norm
    aux: dict  # aux_loss, router_z_loss, moe_loss, expert_counts [L,E], ...
    cache: Any = None  # the updated decode cache when one was passed
    mtp_hidden: Any = None  # [B,T,H] MTP hidden (predicts token t+2) when requested


_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_mixer_out": jax.checkpoint_policies.save_only_these_names("mixer_out"),
    # full remat, except the attention kernels' output and lse (kernels.attention.flash.CORE_NAME): the backward
    # recomputes the projections but not the attention forward (docs/sharding.md, "Remat policy")
    "save_attention": jax.checkpoint_policies.save_only_these_names(flash.CORE_NAME),
}


def decoder_layer(lp, h, layer_type, cfg: ModelConfig, positions, segment_ids, cache=None, cache_ctx=None,
                  parallel: Parallel | None = None):
    """Pre-norm residual layer: h += mixer(norm(h)); h += mlp(norm(h)). Returns (h, moe stats or None, cache)."""
    x = rms_norm_1p(h, lp["input_norm"], cfg.rms_norm_eps)
    # the named scopes label the ops of each part in profiles and HLO dumps (docs/performance.md)
    if layer_type == LINEAR:
        with jax.named_scope("deltanet"):
            m, new_cache = gated_deltanet(lp["linear_attn"], x, cfg, segment_ids, cache, cache_ctx, parallel)
    else:
        with jax.named_scope("attention"):
            m, new_cache = gated_attention(lp["self_attn"], x, cfg, positions, segment_ids, cache, cache_ctx,
                                           parallel)
    h = h + checkpoint_name(m, "mixer_out")
    x = rms_norm_1p(h, lp["post_norm"], cfg.rms_norm_eps)
    with jax.named_scope("mlp"):
        if cfg.is_moe:
            y, stats = moe.moe_block(lp["mlp"], x, cfg, segment_ids != 0, parallel)
        else:
            y, stats = moe.dense_mlp(lp["mlp"], x), None
    return constrain_tokens(h + y, parallel), stats, new_cache


def _run_blocks(blocks, h, cfg: ModelConfig, positions, segment_ids, caches, cache_ctx, parallel):
    pattern = cfg.block_pattern

    def layer(lp, h, layer_type, c):
        run = lambda lp, h, c: decoder_layer(lp, h, layer_type, cfg, positions, segment_ids, c, cache_ctx, parallel)
        if cfg.remat_policy != "none":
            # one checkpoint per layer, not per block of layers: the backward then recomputes a layer from its own
            # saved input, never the layers before it in the block, whose MoE would otherwise run a third time (its
            # token chunks are checkpointed too: a1jax/model/moe.py); one [B, T, H] input saved per layer
            run = jax.checkpoint(run, policy=_REMAT[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
        return run(lp, h, c)

    def block(h, xs):
        block_params, block_cache = xs
        stats, new_caches = [], []
        for i, layer_type in enumerate(pattern):
            h, st, nc = layer(block_params[i], h, layer_type, None if block_cache is None else block_cache[i])
            stats.append(st)
            new_caches.append(nc)
        return h, (stats, None if block_cache is None else new_caches)

    if cfg.scan_layers:
        h, (stats, new_caches) = jax.lax.scan(block, h, (blocks, caches))
    else:
        outs = []
        for b in range(cfg.num_blocks):
            take = lambda t: jax.tree.map(lambda a: a[b], t)
            h, out = block(h, (take(blocks), None if caches is None else take(caches)))
            outs.append(out)
        stats, new_caches = jax.tree.map(lambda *a: jnp.stack(a), *outs) if outs else (None, None)
    return h, stats, new_caches


def _moe_aux(stats, cfg: ModelConfig) -> dict:
    zero = jnp.zeros((), F32)
    if not cfg.is_moe:
        return {"aux_loss": zero, "router_z_loss": zero, "moe_loss": zero}
    # stats: per pattern position, arrays [num_blocks, ...]; layer index = block * P + position
    stacked = {k: jnp.stack([s[k] for s in stats], axis=1) for k in stats[0]}
    per_layer = {k: v.reshape(cfg.num_hidden_layers, *v.shape[2:]) for k, v in stacked.items()}
    aux = moe.load_balancing_loss(per_layer["expert_counts"], per_layer["router_prob_sum"],
                                  per_layer["num_tokens"], cfg.num_experts)
    z = jnp.mean(per_layer["router_z_sum"] / jnp.maximum(per_layer["num_tokens"], 1.0))
    out = {"aux_loss": aux, "router_z_loss": z,
           "moe_loss": cfg.router_aux_loss_coef * aux + cfg.router_z_loss_coef * z,
           "expert_counts": per_layer["expert_counts"]}
    if "ep_transported_rows" in per_layer:  # expert parallel: the share of exchanged rows that were padding
        out["ep_padding_fraction"] = 1.0 - (jnp.sum(per_layer["ep_routed_rows"])
                                            / jnp.maximum(jnp.sum(per_layer["ep_transported_rows"]), 1.0))
    return out


def lm_head_weight(params, cfg: ModelConfig):
    """[H, V] output projection (the transposed embedding when tied)."""
    p = unbox(params)
    return p["embed"].T if cfg.tie_word_embeddings else p["lm_head"]


def logits_from_hidden(params, hidden, cfg: ModelConfig):
    """fp32 logits for (short) hidden states [..., H]. Training losses use losses.token_logprobs instead."""
    w = lm_head_weight(params, cfg).astype(hidden.dtype)
    return jnp.einsum("...h,hv->...v", hidden, w, preferred_element_type=F32)


def mtp_forward(params, hidden, tokens, cfg: ModelConfig, positions, segment_ids, parallel=None):
    """Multi-token prediction (docs/spec/model.md §2.5): combines hidden state t with the embedding of token t+1 and
    runs one full-attention layer; its output (after `mtp.norm`) predicts token t+2 through the shared LM head."""
    p = unbox(params)
    mp = p["mtp"]
    dtype = hidden.dtype
    next_tokens = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    e = rms_norm_1p(jnp.take(p["embed"], next_tokens, axis=0).astype(dtype), mp["pre_fc_norm_embedding"],
                    cfg.rms_norm_eps)
    hh = rms_norm_1p(hidden, mp["pre_fc_norm_hidden"], cfg.rms_norm_eps)
    u = jnp.concatenate([e, hh], axis=-1) @ mp["fc"].astype(dtype)
    for lp in mp["layers"]:
        u, _, _ = decoder_layer(lp, u, "full_attention", cfg, positions + 1, segment_ids, parallel=parallel)
    return rms_norm_1p(u, mp["norm"], cfg.rms_norm_eps)


def forward(params, tokens, cfg: ModelConfig, *, positions=None, segment_ids=None, cache=None,
            return_logits: bool | None = None, mtp: bool = False, parallel: Parallel | None = None) -> Output:
    """Runs the decoder. tokens [B,T] int; positions [B,T] (default: arange, offset by the cache index);
    segment_ids [B,T] (0 = padding; default: one segment). With `cache` (see decode.init_cache) the call appends
    T tokens to it and returns the updated cache in `Output.cache`. `parallel` (model/parallel.py) turns on expert
    and sequence parallelism over its mesh; the result is the same as without it."""
    p = unbox(params)
    dtype = jnp.dtype(cfg.dtype)
    B, T = tokens.shape
    if segment_ids is None:
        segment_ids = jnp.ones((B, T), jnp.int32)
    segment_ids = segment_ids.astype(jnp.int32)
    offset = 0 if cache is None else cache["index"]
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32) + offset, (B, T))

    cache_ctx = layer_caches = None
    if cache is not None:
        cache_ctx = {"index": cache["index"], "last_segment_ids": cache["last_segment_ids"],
                     "segment_ids": jax.lax.dynamic_update_slice(cache["segment_ids"], segment_ids,
                                                                 (0, cache["index"]))}
        layer_caches = cache["blocks"]

    h = constrain_tokens(jnp.take(p["embed"], tokens, axis=0).astype(dtype), parallel)
    h, stats, new_layer_caches = _run_blocks(p["blocks"], h, cfg, positions, segment_ids, layer_caches, cache_ctx,
                                             parallel)
    h = rms_norm_1p(h, p["final_norm"], cfg.rms_norm_eps)

    new_cache = None
    if cache is not None:
        new_cache = {"index": cache["index"] + T, "segment_ids": cache_ctx["segment_ids"],
                     "last_segment_ids": segment_ids[:, -1], "blocks": new_layer_caches}
    if return_logits is None:
        return_logits = B * T * cfg.vocab_size <= AUTO_LOGITS_MAX_ELEMENTS
    logits = logits_from_hidden(p, h, cfg) if return_logits else None
    mtp_hidden = None
    if mtp:
        if "mtp" not in p:
            raise ValueError("forward(mtp=True) needs MTP parameters: set mtp_num_hidden_layers > 0 at init")
        mtp_hidden = mtp_forward(p, h, tokens, cfg, positions, segment_ids, parallel)
    return Output(logits=logits, hidden=h, aux=_moe_aux(stats, cfg), cache=new_cache, mtp_hidden=mtp_hidden)
