"""The gated delta rule (Gated DeltaNet's recurrence), in pure JAX: a token scan and the chunked (WY) form.

The reference every Gated DeltaNet path is checked against: the model (a1jax/model/deltanet.py) runs these
functions, the Pallas kernels (kernels/gdn/) are measured against them, and like all of kernels/ this file imports
nothing from a1jax.

Per value head, with state S in R^{dk x dv} (docs/spec/model.md §2.3 step 6):

    S_t = exp(g_t) * S_{t-1};  u_t = beta_t * (v_t - S_t^T k_t);  S_t += k_t u_t^T;  o_t = S_t^T q_t

q and k arrive l2-normalised (q also scaled by dk^-0.5); everything runs in fp32. `segment_ids` make packed rows
exact: the state resets to zero at every segment start, as if each segment ran alone. The chunked form masks the
decay matrix, the incoming-state term and the state carry by segment instead of using -inf gates (which would give
inf * 0 = nan in the backward pass).

Shapes: q, k [B, T, H, dk]; v [B, T, H, dv]; g, beta [B, T, H]; segment_ids [B, T]; state [B, H, dk, dv].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def segment_starts(segment_ids, T, B):
    """is_start[b, t]: token t opens a new segment (t > 0 and its id differs from t-1). t = 0 continues the state."""
    if segment_ids is None:
        return jnp.zeros((B, T), bool)
    prev = jnp.concatenate([segment_ids[:, :1], segment_ids[:, :-1]], axis=1)
    return segment_ids != prev


def mm(a, b):
    """a @ b in fp32 (batched or 2-D; also inside the Pallas kernels of kernels/gdn/)."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST, preferred_element_type=F32)


def unit_lower_inverse(a):
    """(I + a)^-1 for strictly lower-triangular a [..., C, C], matmul-only (C a power of two).

    Blockwise doubling: X holds the inverses of the diagonal s-blocks (X = I for s = 1). Each pair of s-blocks forms
    a 2s-block [[D1, 0], [E, D2]] whose inverse is X - X E X (E = its lower-left block), so log2(C) rounds of two
    matmuls replace the C-step row-sequential forward substitution."""
    C = a.shape[-1]
    row = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    x = jnp.where(row == col, 1.0, 0.0).astype(F32)
    s, shift = 1, 0
    while s < C:
        pair = jnp.right_shift(row, shift + 1) == jnp.right_shift(col, shift + 1)
        off = jnp.right_shift(row, shift) != jnp.right_shift(col, shift)
        e = jnp.where(pair & off, a, 0.0)
        x = x - mm(mm(x, e), x)
        s, shift = 2 * s, shift + 1
    return x


def _strict_lower(x):
    C = x.shape[-1]
    row = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    return jnp.where(row > col, x, 0.0)


@jax.custom_vjp
def lower_inverse(a):
    """(I + a)^-1 for strictly lower-triangular a [..., C, C] (C a power of two), for the XLA paths; equal to
    `unit_lower_inverse` (which a Pallas kernel body can run: full-size matmuls only).

    Forward: the same doubling on the diagonal blocks alone. The inverse is block lower-triangular at every scale, so
    each round joins two s-blocks [[X1, 0], [E, X2]] into [[X1, 0], [-X2 E X1, X2]] with two s x s matmuls per pair:
    about C^3 FLOPs in all, where the full-size rounds spend 4 log2(C) C^3.
    Backward: with X = (I + a)^-1, dX = -X da X, so the cotangent of a is -X^T dX X^T on the strictly lower
    entries (the only ones the inverse reads): two matmuls, instead of differentiating every round."""
    *lead, C, _ = a.shape
    x = jnp.ones((*lead, C, 1, 1), F32)  # the diagonal 1-blocks of the inverse
    s = 1
    while s < C:
        m = C // (2 * s)
        diag = jnp.diagonal(a.reshape(*lead, m, 2 * s, m, 2 * s), axis1=-4, axis2=-2)  # [..., 2s, 2s, m]
        e = jnp.moveaxis(diag, -1, -3)[..., s:, :s]  # lower-left s-block of each diagonal 2s-block
        pair = x.reshape(*lead, m, 2, s, s)
        x1, x2 = pair[..., 0, :, :], pair[..., 1, :, :]
        x = jnp.concatenate([jnp.concatenate([x1, jnp.zeros_like(x1)], axis=-1),
                             jnp.concatenate([-mm(mm(x2, e), x1), x2], axis=-1)], axis=-2)
        s *= 2
    return x.reshape(*lead, C, C)


def _lower_inverse_fwd(a):
    x = lower_inverse(a)
    return x, x


def _lower_inverse_bwd(x, dx):
    xt = jnp.swapaxes(x, -1, -2)
    return (_strict_lower(-mm(mm(xt, dx), xt)),)


lower_inverse.defvjp(_lower_inverse_fwd, _lower_inverse_bwd)


def gated_delta_rule_scan(q, k, v, g, beta, *, segment_ids=None, initial_state=None):
    """Token-by-token reference. Returns (o [B,T,H,dv] fp32, final_state [B,H,dk,dv] fp32)."""
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    q, k, v, g, beta = (a.astype(F32) for a in (q, k, v, g, beta))
    state = jnp.zeros((B, H, dk, dv), F32) if initial_state is None else initial_state.astype(F32)
    keep = 1.0 - segment_starts(segment_ids, T, B).astype(F32)  # [B, T]

    def step(S, xs):
        q_t, k_t, v_t, g_t, b_t, keep_t = xs  # [B,H,dk], [B,H,dk], [B,H,dv], [B,H], [B,H], [B]
        S = S * (jnp.exp(g_t) * keep_t[:, None])[..., None, None]
        u = b_t[..., None] * (v_t - jnp.einsum("bhkv,bhk->bhv", S, k_t))
        S = S + k_t[..., :, None] * u[..., None, :]
        return S, jnp.einsum("bhkv,bhk->bhv", S, q_t)

    xs = tuple(jnp.moveaxis(a, 1, 0) for a in (q, k, v, g, beta, keep))
    state, o = jax.lax.scan(step, state, xs)
    return jnp.moveaxis(o, 0, 1), state


def gated_delta_rule_chunked(q, k, v, g, beta, *, segment_ids=None, initial_state=None, chunk_size: int = 64,
                             inverse: str = "solve"):
    """Chunked WY form (HF `torch_chunk_gated_delta_rule`, FLA `chunk_gated_delta_rule`), sequential only over chunks.

    `inverse` says how (I + A)^-1 is applied: "solve" (`solve_triangular`, the reference) or "doubling"
    (`lower_inverse`, matmuls only, for a power-of-two chunk): on XLA:CPU the triangular solve is a LAPACK call
    that runs at a few GFLOP/s on 64 x 64 blocks, the doubling is batched matmuls (kernels/gdn/chunk.py, "xla_cpu").

    Within a chunk with cumulative log-decay gamma (all exponents below are <= 0, so nothing overflows):
        A  = strict_tril(beta_i k_i.k_j e^{gamma_i - gamma_j}) masked to same-segment pairs
        U  = (I + A)^-1 (beta V),   W = (I + A)^-1 (beta K e^{gamma})   (rows that see the incoming state)
        V' = U - W S;   O = (Q e^{gamma}) S + tril(Q K^T e^{gamma_i - gamma_j}) V';   S <- e^{gamma_C} S + (K e^{gamma_C - gamma})^T V'
    """
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    C = chunk_size
    n = -(-T // C)
    pad = n * C - T
    q, k, v, g, beta = (a.astype(F32) for a in (q, k, v, g, beta))
    is_start = segment_starts(segment_ids, T, B)
    if pad:
        # Padded tokens have k = v = beta = g = 0: they leave the state untouched and stay in the last segment.
        pad_t = lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        q, k, v, g, beta, is_start = (pad_t(a) for a in (q, k, v, g, beta, is_start))

    # [B, T, H, d] -> [B, H, n, C, d]
    to_chunks = lambda a: jnp.moveaxis(a, 2, 1).reshape(B, H, n, C, *a.shape[3:])
    q, k, v = to_chunks(q), to_chunks(k), to_chunks(v)
    g = jnp.moveaxis(g, 2, 1).reshape(B, H, n, C)
    beta = jnp.moveaxis(beta, 2, 1).reshape(B, H, n, C)
    seg_idx = jnp.cumsum(is_start.reshape(B, n, C), axis=-1)[:, None]  # [B, 1, n, C]: segment index in chunk
    first = seg_idx == 0  # token continues the segment that was open at the chunk start
    last = seg_idx == seg_idx[..., -1:]  # token belongs to the segment still open at the chunk end

    gamma = jnp.cumsum(g, axis=-1)  # [B, H, n, C]
    i = jnp.arange(C)
    causal = i[:, None] >= i[None, :]
    same = seg_idx[..., :, None] == seg_idx[..., None, :]  # [B, 1, n, C, C]
    mask_incl = causal & same
    mask_strict = mask_incl & (i[:, None] != i[None, :])
    diff = gamma[..., :, None] - gamma[..., None, :]
    decay = jnp.where(mask_incl, jnp.exp(jnp.where(mask_incl, diff, 0.0)), 0.0)  # [B, H, n, C, C]

    kk = jnp.einsum("bhnid,bhnjd->bhnij", k, k)
    A = jnp.where(mask_strict, beta[..., :, None] * kk * decay, 0.0)
    rhs = jnp.concatenate([beta[..., None] * v, (beta * jnp.exp(gamma))[..., None] * k], axis=-1)
    if inverse == "doubling":
        sol = mm(lower_inverse(A), rhs)
    else:
        sol = jax.scipy.linalg.solve_triangular(jnp.eye(C, dtype=F32) + A, rhs, lower=True, unit_diagonal=True)
    u, w = sol[..., :dv], sol[..., dv:]
    w = jnp.where(first[..., None], w, 0.0)
    q_state = jnp.where(first[..., None], q * jnp.exp(gamma)[..., None], 0.0)
    qk = jnp.einsum("bhnid,bhnjd->bhnij", q, k) * decay
    decay_last = jnp.exp(gamma[..., -1:] - gamma)  # [B, H, n, C]
    k_carry = jnp.where(last[..., None], k * decay_last[..., None], 0.0)
    carry_decay = jnp.where(first[..., -1], jnp.exp(gamma[..., -1]), 0.0)  # [B, H, n]: 0 if a segment began

    state0 = jnp.zeros((B, H, dk, dv), F32) if initial_state is None else initial_state.astype(F32)

    def step(S, xs):
        u_c, w_c, qs_c, qk_c, kc_c, cd_c = xs
        v_new = u_c - jnp.einsum("bhik,bhkv->bhiv", w_c, S)
        o = jnp.einsum("bhik,bhkv->bhiv", qs_c, S) + jnp.einsum("bhij,bhjv->bhiv", qk_c, v_new)
        S = cd_c[..., None, None] * S + jnp.einsum("bhjk,bhjv->bhkv", kc_c, v_new)
        return S, o

    xs = tuple(jnp.moveaxis(a, 2, 0) for a in (u, w, q_state, qk, k_carry, carry_decay))
    state, o = jax.lax.scan(step, state0, xs)  # o: [n, B, H, C, dv]
    o = jnp.moveaxis(o, 0, 2).reshape(B, H, n * C, dv)[:, :, :T]
    return jnp.moveaxis(o, 1, 2), state
