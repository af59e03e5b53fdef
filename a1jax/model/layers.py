"""Small shared layers: the two RMSNorm variants, partial rotate-half RoPE, SwiGLU. See docs/spec/model.md §2.1-2.2."""
from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def rms_norm_1p(x, weight, eps: float):
    """Zero-centred RMSNorm: `x * rsqrt(mean(x^2) + eps) * (1 + w)` in fp32, cast back to x's dtype."""
    xf = x.astype(F32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (y * (1.0 + weight.astype(F32))).astype(x.dtype)


def gated_rms_norm(x, gate, weight, eps: float):
    """DeltaNet output norm: a *plain* weight (init 1), normalised value cast to x's dtype before `w * n * silu(z)`."""
    xf = x.astype(F32)
    n = (xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)).astype(x.dtype)
    y = (weight.astype(x.dtype) * n).astype(F32) * jax.nn.silu(gate.astype(F32))
    return y.astype(x.dtype)


def l2_normalize(x, eps: float = 1e-6):
    """DeltaNet q/k norm; the eps sits inside the rsqrt (HF `l2norm`)."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def rope_cos_sin(positions, rotary_dim: int, theta: float, dtype):
    """cos/sin [..., rotary_dim] for integer positions; fp32 math, then cast as HF does."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.int32).astype(F32) / rotary_dim))
    ang = positions.astype(F32)[..., None] * inv_freq
    emb = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_partial_rope(x, cos, sin):
    """Rotate-half (NeoX) RoPE on the first `cos.shape[-1]` dims of each head; the rest passes through.

    x: [B, T, N, D]; cos/sin: [B, T, R].
    """
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    half = r // 2
    rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)


def swiglu(x, w_gate, w_up, w_down):
    """`(silu(x W_g) * (x W_u)) W_d` with [in, out] weights."""
    return (jax.nn.silu(x @ w_gate) * (x @ w_up)) @ w_down
