"""Chunked gated delta rule in Pallas: WY preparation, the `fwd_h` state walk, the output kernel, and a custom_vjp.

Forward (three kernels, only the middle one sequential over chunks):
  1. intra.wy_pallas: W, U per chunk, parallel over (batch, head, chunk);
  2. state.fwd_h: the state entering each chunk, h_c, and v_new = U - W h_c;
  3. the output kernel: o = Qs h_c + P v_new, parallel over chunks.
Backward: the custom_vjp saves only the inputs. It recomputes W, U (and the other intra-chunk factors) in jnp under
`jax.vjp`, recomputes h with `fwd_h`, walks the chunks in reverse with `state.bwd_dhu` for the state gradients, forms
the per-chunk cotangents with batched einsums, and pulls them back through the intra-chunk vjp. Per-chunk states
[B, H, n, dk, dv] exist only transiently (fwd: n*dk/C = dk/64 times the size of v; bwd: twice that), never as saved
residuals.

Semantics, shapes and segment handling follow kernels/reference/gated_delta_rule.py; q, k may have fewer heads than v
(Hv = rep * Hk, v-head h reads qk-head h // rep) without being repeated in memory.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from kernels.reference import gated_delta_rule as gdr
from kernels import backend
from kernels.attention import _pallas
from kernels.gdn import intra, state
from kernels.gdn.intra import HIGHEST, mm, mm_nt
from kernels.reference import gdn as ref

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class GdnConfig:
    """Static choices. with_output=False computes only the final state (the context-parallel pre-pass)."""
    chunk: int = 64
    variant: str = "tpu"
    block_v: int = 128
    interpret: bool = False
    with_output: bool = True


def make_config(impl: str, chunk: int, block_v=None, interpret=None) -> GdnConfig:
    if chunk & (chunk - 1):  # dispatch falls back to the XLA implementation
        raise NotImplementedError(f"the Pallas DeltaNet needs a power-of-two chunk_size (blockwise inverse), "
                                  f"got {chunk}")
    variant = _pallas.variant_of(impl)
    # TPU: a full 128-wide value block keeps the MXU busy; GPU: 64 doubles the programs of the sequential walk.
    return GdnConfig(chunk=chunk, variant=variant, block_v=block_v or (128 if variant == "tpu" else 64),
                     interpret=_pallas.interpret_default(variant) if interpret is None else interpret)


# ---- output kernel ------------------------------------------------------------------------------------------------
def _output_kernel(q_ref, k_ref, vn_ref, h_ref, gc_ref, gr_ref, sc_ref, sr_ref, o_ref):
    q, k, gc, gr, sc, sr = (r[...] for r in (q_ref, k_ref, gc_ref, gr_ref, sc_ref, sr_ref))
    q, k = q.astype(F32), k.astype(F32)
    C = q.shape[0]
    row = jax.lax.broadcasted_iota(jnp.int32, (C, C), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (C, C), 1)
    incl = (row >= col) & (sc == sr)
    p = jnp.where(incl, mm_nt(q, k) * jnp.exp(jnp.where(incl, gc - gr, 0.0)), 0.0)
    qs = jnp.where(sc == 0, q * jnp.exp(gc), 0.0)
    o_ref[...] = mm(qs, h_ref[...]) + mm(p, vn_ref[...])


def output_cost(B, H, Tp, C, dk, dv, in_itemsize):
    """pl.CostEstimate of `output_pallas` per (batch, head, chunk): Q Kᵀ 2C²dk, Qs h 2C·dk·dv, P v_new 2C²dv; exp of the
    C² decays and the C gates. Reads q, k, v_new, the chunk's state and the columns; writes o in fp32."""
    steps = B * H * (Tp // C)
    reads = 2 * C * dk * in_itemsize + 4 * (C * dv + dk * dv) + 4 * 4 * C
    return pl.CostEstimate(flops=int(steps * 2 * C * (C * dk + dk * dv + C * dv)),
                           transcendentals=int(steps * (C * C + C)), bytes_accessed=int(steps * (reads + 4 * C * dv)))


def output_pallas(q, k, v_new, h, gam_col, gam_row, sidx_col, sidx_row, *, chunk, variant, interpret):
    """o [B, H, Tp, dv] fp32 = Qs h_c + P v_new, one grid step per (batch, head, chunk)."""
    B, Hk, Tp, dk = q.shape
    H, dv = v_new.shape[1], v_new.shape[3]
    rep, C = H // Hk, chunk
    tok = lambda d, hmap=lambda h: h: pl.BlockSpec((None, None, C, d), lambda b, h, c: (b, hmap(h), c, 0))
    return _pallas.call(
        _output_kernel, variant=variant, grid=(B, H, Tp // C), interpret=interpret, semantics=("parallel",) * 3,
        in_specs=[tok(dk, lambda h: h // rep), tok(dk, lambda h: h // rep), tok(dv),
                  pl.BlockSpec((None, None, dk, dv), lambda b, h, c: (b, h, c, 0)), tok(1),
                  pl.BlockSpec((None, None, None, 1, C), lambda b, h, c: (b, h, c, 0, 0)),
                  pl.BlockSpec((None, C, 1), lambda b, h, c: (b, c, 0)),
                  pl.BlockSpec((None, None, 1, C), lambda b, h, c: (b, c, 0, 0))],
        out_specs=tok(dv), out_shape=_pallas.out_struct((B, H, Tp, dv), F32, v_new),
        name="gdn_output", cost=output_cost(B, H, Tp, C, dk, dv, q.dtype.itemsize))(q, k, v_new, h, gam_col, gam_row, sidx_col, sidx_row)


# ---- the custom_vjp op on the kernel layout -----------------------------------------------------------------------
def _columns(gamma, beta, sidx, C):
    B, H, Tp = gamma.shape
    n = Tp // C
    return dict(gam_col=gamma[..., None], gam_row=gamma.reshape(B, H, n, 1, C), beta_col=beta[..., None],
                sidx_col=sidx[..., None], sidx_row=sidx.reshape(B, n, 1, C))


def _forward(q, k, v, gamma, beta, sidx, s0, cfg: GdnConfig):
    c = _columns(gamma, beta, sidx, cfg.chunk)
    common = dict(variant=cfg.variant, interpret=cfg.interpret)
    w, u = intra.wy_pallas(k, v, c["gam_col"], c["gam_row"], c["beta_col"], c["sidx_col"], c["sidx_row"],
                           chunk=cfg.chunk, **common)
    walk = functools.partial(state.fwd_h, k, w, u, c["gam_col"], c["sidx_col"], s0, chunk=cfg.chunk,
                             block_v=cfg.block_v, **common)
    if not cfg.with_output:
        return walk(with_states=False)
    h, v_new, s_final = walk()
    o = output_pallas(q, k, v_new, h, c["gam_col"], c["gam_row"], c["sidx_col"], c["sidx_row"], chunk=cfg.chunk,
                      **common)
    return o, s_final


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _gdn(q, k, v, gamma, beta, sidx, s0, cfg):
    return _forward(q, k, v, gamma, beta, sidx, s0, cfg)


def _gdn_vjp_fwd(q, k, v, gamma, beta, sidx, s0, cfg):
    return _forward(q, k, v, gamma, beta, sidx, s0, cfg), (q, k, v, gamma, beta, sidx, s0)


def _gdn_vjp_bwd(cfg, res, ct):
    q, k, v, gamma, beta, sidx, s0 = res
    B, Hk, Tp, dk = k.shape
    H, dv = v.shape[1], v.shape[3]
    C = cfg.chunk
    n = Tp // C
    do, ds_final = ct if cfg.with_output else (jnp.zeros((B, H, Tp, dv), F32), ct)
    do = do.astype(F32)
    chunked = lambda x: x.reshape(B, x.shape[1], n, C, *x.shape[3:])
    flat = lambda x: x.reshape(B, H, Tp, x.shape[-1])

    def factors(q, k, v, gamma, beta):
        return intra.intra_chunk(chunked(q), chunked(k), chunked(v), chunked(gamma), chunked(beta),
                                 sidx.reshape(B, n, C), H // Hk)

    (w, u, qs, p, kc, cd), intra_vjp = jax.vjp(factors, q, k, v, gamma, beta)
    c = _columns(gamma, beta, sidx, C)
    common = dict(chunk=C, block_v=cfg.block_v, variant=cfg.variant, interpret=cfg.interpret)
    h, v_new, _ = state.fwd_h(k, flat(w), flat(u), c["gam_col"], c["sidx_col"], s0, **common)
    do_c = chunked(do)
    dv_local = jnp.einsum("bhnij,bhniv->bhnjv", p, do_c, precision=HIGHEST)  # P^T do: intra-chunk, parallel
    dh, dv_new, ds0 = state.bwd_dhu(q, k, flat(w), do, flat(dv_local), c["gam_col"], c["sidx_col"],
                                    ds_final.astype(F32), **common)
    h_c, dh_c = h.reshape(B, H, n, dk, dv), dh.reshape(B, H, n, dk, dv)
    vn_c, dvn_c = chunked(v_new), chunked(dv_new)
    ein = functools.partial(jnp.einsum, precision=HIGHEST)
    cts = (-ein("bhncv,bhnkv->bhnck", dvn_c, h_c),  # W:  v_new = U - W h
           dvn_c,  # U
           ein("bhncv,bhnkv->bhnck", do_c, h_c),  # Qs: o = Qs h + P v_new
           ein("bhniv,bhnjv->bhnij", do_c, vn_c),  # P
           ein("bhncv,bhnkv->bhnck", vn_c, dh_c),  # Kc: S' = cd h + Kc^T v_new
           jnp.sum(h_c * dh_c, axis=(-1, -2)))  # cd
    dq, dk_, dv_, dgamma, dbeta = intra_vjp(cts)
    return dq, dk_, dv_, dgamma, dbeta, np.zeros(sidx.shape, jax.dtypes.float0), ds0


_gdn.defvjp(_gdn_vjp_fwd, _gdn_vjp_bwd)


def apply(q, k, v, g, beta, segment_ids, initial_state, cfg: GdnConfig):
    """Model layout in ([B,T,Hk,dk], [B,T,H,dv], [B,T,H]); pads to whole chunks and builds the chunk-local cumulative
    decay and segment index. Returns (o [B,T,H,dv] fp32, final state) or, without output, the final state."""
    B, T, Hk, dk = q.shape
    H, dv = v.shape[2], v.shape[3]
    if H % Hk:
        raise ValueError(f"value heads ({H}) must be a multiple of query/key heads ({Hk})")
    C = cfg.chunk
    n = -(-T // C)
    pad = n * C - T
    pad_t = lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
    # Padded tokens have k = v = beta = g = 0: they leave the state untouched and stay in the last segment.
    q, k, v, g, beta = (pad_t(a.astype(F32)) for a in (q, k, v, g, beta))
    is_start = pad_t(gdr.segment_starts(segment_ids, T, B))  # the model's definition: t = 0 continues the state
    sidx = jnp.cumsum(is_start.reshape(B, n, C).astype(jnp.int32), axis=-1).reshape(B, n * C)
    heads = lambda a: jnp.moveaxis(a, 2, 1)
    gamma = jnp.cumsum(heads(g).reshape(B, H, n, C), axis=-1).reshape(B, H, n * C)
    s0 = jnp.zeros((B, H, dk, dv), F32) if initial_state is None else initial_state.astype(F32)
    out = _gdn(heads(q), heads(k), heads(v), gamma, heads(beta), sidx, s0, cfg)
    if not cfg.with_output:
        return out
    o, s_final = out
    return jnp.moveaxis(o, 1, 2)[:, :T], s_final


def chunk_gated_delta_rule(q, k, v, g, beta, *, segment_ids=None, initial_state=None, chunk_size: int = 64,
                           impl=None, block_v=None, interpret=None):
    """The gated delta rule, chunked. q, k [B,T,Hk,dk]; v [B,T,H,dv] (H a multiple of Hk); g (log decay <= 0), beta
    [B,T,H]; segment_ids [B,T]; initial_state [B,H,dk,dv]. Returns (o [B,T,H,dv] fp32, final_state fp32).

    impl: "xla" (the pure-jnp chunked form of kernels/reference/gated_delta_rule.py), "xla_cpu" (the same with the
    matmul-only doubling inverse instead of a triangular solve), "pallas_tpu", "pallas_gpu", or None/"auto" for the
    platform default (kernels/backend.py, op "gdn"; $KERNELS_GDN_IMPL overrides)."""
    pallas = lambda name: apply(q, k, v, g, beta, segment_ids, initial_state,
                                make_config(name, chunk_size, block_v, interpret))

    def xla(inverse):
        if inverse == "doubling" and chunk_size & (chunk_size - 1):
            raise NotImplementedError(f"chunk_size {chunk_size} is not a power of two (the doubling inverse)")
        return ref.chunked_xla(q, k, v, g, beta, segment_ids=segment_ids, initial_state=initial_state,
                               chunk_size=chunk_size, inverse=inverse)

    table = {"pallas_tpu": lambda: pallas("pallas_tpu"), "pallas_gpu": lambda: pallas("pallas_gpu"),
             "xla_cpu": lambda: xla("doubling"), "xla": lambda: xla("solve")}
    return backend.dispatch("gdn", table, impl)
