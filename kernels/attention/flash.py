"""Flash attention block kernels (Pallas, TPU and Triton variants) and the single-device `flash_attention`.

The forward returns (o, lse); the backward takes the *global* (o, lse) through lse and delta = sum(o * do), so the
same block backward serves one device and every hop of the ring (docs/spec/kernels.md §4: the cuDNN VJP drops the lse
cotangent, which is why the ring cannot be built from cuDNN blocks).

Kernel layout (built by `to_kernel_layout`): q [B, nh, T, D], k/v [B, nkv, S, D] (kv heads are picked by the index map
h // (nh / nkv), never repeated in memory); segment ids and positions as [B, T, 1] columns for queries and [B, 1, S]
rows for keys, which keeps the last two block dims legal on TPU ((8, 128)-divisible or full). Masks are built from
segment ids and *global* positions, so causal masking works for any token order (zig-zag rings included), and a kv
block whose segment or position ranges cannot meet the q block is skipped.

Masked scores use the finite NEG, and probabilities are re-masked after the exp, so a fully masked row ends with
l = 0, which gives o = 0 and lse = NEG, never NaN.

Backward (`flash_bwd`): by default one fused kernel "flash_bwd" that does 5 block matmuls per visited (q block, kv
block) pair (QK^T, dO V^T, P^T dO -> dV, dS^T Q -> dK, dS K -> dQ) with the grid over kv blocks, against 3 + 4 = 7 for
the two kernels "flash_dq" and "flash_dkv" (`FlashConfig.fused_bwd=False`), which each recompute QK^T and dO V^T.
Triton: dk/dv in registers, each pair's dq added with atomics into an f32 dq that starts at zeros. TPU (no atomics,
and an output block is never re-read once left): keys in superblocks of `superblock` keys whose f32 dk/dv stay in
VMEM while all q blocks pass, and per superblock a dq partial, summed outside the kernel.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from kernels import backend
from kernels.attention import _pallas, cpu
from kernels.reference import attention as ref

F32 = jnp.float32
NEG = ref.NEG
Q_PAD = np.iinfo(np.int32).min  # segment id of padded queries: matches no key
KV_PAD = Q_PAD + 1  # segment id of padded keys: matches no query


@dataclasses.dataclass(frozen=True)
class FlashConfig:
    """Static kernel choices. variant: "tpu" (kv loop on the grid, VMEM scratch) or "triton" (in-kernel kv loop)."""
    causal: bool = True
    variant: str = "tpu"
    block_q: int = 128
    block_k: int = 128
    interpret: bool = False
    num_warps: int = 4
    num_stages: int = 2
    fused_bwd: bool = True  # one backward kernel (5 matmuls per block pair) instead of flash_dq + flash_dkv (7)
    kv_superblock: int = 0  # TPU fused backward: keys per dk/dv superblock (a multiple of block_k); 0: `superblock`


def make_config(impl: str, causal: bool, block_q=None, block_k=None, interpret=None) -> FlashConfig:
    variant = _pallas.variant_of(impl)
    default = 128 if variant == "tpu" else 64  # Triton at head_dim 256 is register-bound (docs/spec/kernels.md §5)
    return FlashConfig(causal=causal, variant=variant, block_q=block_q or default, block_k=block_k or default,
                       interpret=_pallas.interpret_default(variant) if interpret is None else interpret)


# ---- block math shared by both variants ---------------------------------------------------------------------------
def _dot_nt(a, b):  # a [m, d] . b [n, d]^T -> [m, n] f32
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=F32)


def _dot_tn(a, b):  # a [m, n]^T . b [m, d] -> [n, d] f32
    return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=F32)


def _mask(qseg, kseg, qpos, kpos, causal):  # [bq, 1] x [1, bk] -> [bq, bk]
    m = qseg == kseg
    return m & (qpos >= kpos) if causal else m


def _range(seg, pos):
    """(min, max) of a block's segment ids and positions: enough to know whether two blocks can meet. One axis at a
    time: the Triton lowering of a multi-axis reduce loses the aval's sharding under an abstract mesh."""
    lo = lambda x: jnp.min(jnp.min(x, axis=1), axis=0)
    hi = lambda x: jnp.max(jnp.max(x, axis=1), axis=0)
    return lo(seg), hi(seg), lo(pos), hi(pos)


def _needed(q_range, k_range, causal):
    """False only if no (query, key) pair of the blocks can be unmasked: the block is skipped."""
    qs_min, qs_max, _, qp_max = q_range
    ks_min, ks_max, kp_min, _ = k_range
    ok = (qs_max >= ks_min) & (qs_min <= ks_max)
    return ok & (qp_max >= kp_min) if causal else ok


def _tpu_pair(qseg_ref, kseg_ref, qpos_ref, kpos_ref, causal):
    """The ids of a TPU grid step's (q block, kv block) pair, and whether any of its (query, key) pairs is unmasked."""
    qs, ks, qp, kp = qseg_ref[...], kseg_ref[...], qpos_ref[...], kpos_ref[...]
    return (qs, ks, qp, kp), _needed(_range(qs, qp), _range(ks, kp), causal)


def _fwd_step(carry, q, k, v, mask, scale):
    m, l, acc = carry
    s = jnp.where(mask, _dot_nt(q, k) * scale, NEG)
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    p = jnp.where(mask, jnp.exp(s - m_new), 0.0)  # re-mask: in a fully masked row s - m_new = 0
    alpha = jnp.exp(m - m_new)
    l = alpha * l + jnp.sum(p, axis=1, keepdims=True)
    acc = alpha * acc + jnp.dot(p.astype(v.dtype), v, preferred_element_type=F32)
    return m_new, l, acc


def _finalize(m, l, acc):
    empty = l == 0.0
    l_safe = jnp.where(empty, 1.0, l)
    return acc / l_safe, jnp.where(empty, NEG, m + jnp.log(l_safe))


def _probs(q, k, lse, mask, scale):
    return jnp.where(mask, jnp.exp(_dot_nt(q, k) * scale - lse), 0.0)


def _probs_and_ds(q, k, v, do, lse, delta, mask, scale):  # QK^T, dO V^T: P and dS = P (dP - delta)
    p = _probs(q, k, lse, mask, scale)
    return p, p * (_dot_nt(do, v) - delta)


def _dq_part(ds, k, scale):  # dS K
    return jnp.dot(ds.astype(k.dtype), k, preferred_element_type=F32) * scale


def _dkv_part(carry, p, ds, q, do, scale):  # P^T dO, dS^T Q
    dk, dv = carry
    return dk + _dot_tn(ds.astype(q.dtype), q) * scale, dv + _dot_tn(p.astype(do.dtype), do)


def _dq_step(dq, q, k, v, do, lse, delta, mask, scale):
    _, ds = _probs_and_ds(q, k, v, do, lse, delta, mask, scale)
    return dq + _dq_part(ds, k, scale)


def _dkv_step(carry, q, k, v, do, lse, delta, mask, scale):
    p, ds = _probs_and_ds(q, k, v, do, lse, delta, mask, scale)
    return _dkv_part(carry, p, ds, q, do, scale)


def _fused_step(carry, q, k, v, do, lse, delta, mask, scale):
    """The whole backward of one block pair, 5 matmuls: ((dk, dv) carry updated, this pair's dq contribution)."""
    p, ds = _probs_and_ds(q, k, v, do, lse, delta, mask, scale)
    return _dkv_part(carry, p, ds, q, do, scale), _dq_part(ds, k, scale)


# ---- forward ------------------------------------------------------------------------------------------------------
def _fwd_kernel_tpu(qseg_ref, kseg_ref, qpos_ref, kpos_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc,
                    *, causal, scale):
    j = pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, NEG, F32)
        l_sc[...] = jnp.zeros(l_sc.shape, F32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, F32)

    ids, needed = _tpu_pair(qseg_ref, kseg_ref, qpos_ref, kpos_ref, causal)

    @pl.when(needed)
    def _step():
        m, l, acc = _fwd_step((m_sc[...], l_sc[...], acc_sc[...]), q_ref[...], k_ref[...], v_ref[...],
                              _mask(*ids, causal), scale)
        m_sc[...], l_sc[...], acc_sc[...] = m, l, acc

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        o, lse = _finalize(m_sc[...], l_sc[...], acc_sc[...])
        o_ref[...] = o.astype(o_ref.dtype)
        lse_ref[...] = lse


def _fwd_kernel_triton(qseg_ref, kseg_ref, qpos_ref, kpos_ref, q_ref, k_ref, v_ref, o_ref, lse_ref,
                       *, causal, scale, bk, nk):
    q, qs, qp = q_ref[...], qseg_ref[...], qpos_ref[...]
    bq, D = q.shape
    q_range = _range(qs, qp)  # loop-invariant; reducing it inside the loop trips the Triton lowering

    def body(j, carry):
        sl = pl.ds(pl.multiple_of(j * bk, bk), bk)
        ks, kp = kseg_ref[:, sl], kpos_ref[:, sl]
        step = lambda c: _fwd_step(c, q, k_ref[sl, :], v_ref[sl, :], _mask(qs, ks, qp, kp, causal), scale)
        return jax.lax.cond(_needed(q_range, _range(ks, kp), causal), step, lambda c: c, carry)

    init = (jnp.full((bq, 1), NEG, F32), jnp.zeros((bq, 1), F32), jnp.zeros((bq, D), F32))
    o, lse = _finalize(*jax.lax.fori_loop(0, nk, body, init))
    o_ref[...] = o.astype(o_ref.dtype)
    lse_ref[...] = lse


def _blocks(cfg: FlashConfig, T, S):
    bq, bk = min(cfg.block_q, T), min(cfg.block_k, S)
    if T % bq or S % bk:
        raise ValueError(f"sequence lengths (T={T}, S={S}) must be multiples of the blocks ({bq}, {bk}); "
                         "to_kernel_layout pads them")
    return bq, bk


# ---- work done: the blocks the masks leave ----------------------------------------------------------------------
def visited_pairs(cfg: FlashConfig, T, S, visible=None) -> float:
    """(q block, kv block) pairs per (batch, query head) that the kernels run, the skipped ones left out.

    `visible`: the share of pairs the caller knows to be unmasked (a ring hop passes its mean share); None means
    queries and keys are the same tokens in index order, so with `causal` exactly the blocks on or below the diagonal
    run. Packed segments only skip more: the estimate assumes one segment per row, an upper bound."""
    bq, bk = _blocks(cfg, T, S)
    nq, nk = T // bq, S // bk
    if visible is not None:
        return float(visible) * nq * nk
    if not cfg.causal:
        return float(nq * nk)
    return float(sum(min(nk, ((i + 1) * bq - 1) // bk + 1) for i in range(nq)))


def _cost(q, k, cfg, visible, matmuls: int, out_bytes: int):
    """pl.CostEstimate of a kernel that does `matmuls` [bq, bk, D] products per visited pair and head."""
    B, nh, T, D = q.shape
    S = k.shape[2]
    bq, bk = _blocks(cfg, T, S)
    pairs = visited_pairs(cfg, T, S, visible)
    kv_bytes = 2 * B * nh * pairs * bk * D * k.dtype.itemsize  # a k and a v block streamed per visited pair
    return pl.CostEstimate(
        flops=int(B * nh * pairs * matmuls * 2 * bq * bk * D), transcendentals=int(B * nh * pairs * bq * bk),
        bytes_accessed=int(2 * q.size * q.dtype.itemsize + kv_bytes + out_bytes))


# QK, PV | QK, dO V, dS K | QK, P dO, dO V, dS Q | QK, dO V, P dO, dS Q, dS K
FWD_MATMULS, DQ_MATMULS, DKV_MATMULS, FUSED_BWD_MATMULS = 2, 3, 4, 5


def flash_fwd(q, k, v, qseg, kseg, qpos, kpos, cfg: FlashConfig, out_dtype=None, visible=None):
    """Kernel layout in, (o [B,nh,T,D] in out_dtype, lse [B,nh,T,1] f32) out. `visible`: see `visited_pairs`."""
    B, nh, T, D = q.shape
    nkv, S = k.shape[1], k.shape[2]
    G = nh // nkv
    bq, bk = _blocks(cfg, T, S)
    scale = D ** -0.5
    out_shape = (_pallas.out_struct((B, nh, T, D), out_dtype or q.dtype, q),
                 _pallas.out_struct((B, nh, T, 1), F32, q))
    if cfg.variant == "tpu":
        grid = (B, nh, T // bq, S // bk)
        kernel = functools.partial(_fwd_kernel_tpu, causal=cfg.causal, scale=scale)
        q_spec = pl.BlockSpec((None, None, bq, D), lambda b, h, i, j: (b, h, i, 0))
        kv_spec = pl.BlockSpec((None, None, bk, D), lambda b, h, i, j: (b, h // G, j, 0))
        qid_spec = pl.BlockSpec((None, bq, 1), lambda b, h, i, j: (b, i, 0))
        kid_spec = pl.BlockSpec((None, 1, bk), lambda b, h, i, j: (b, 0, j))
        lse_spec = pl.BlockSpec((None, None, bq, 1), lambda b, h, i, j: (b, h, i, 0))
        semantics = ("parallel", "parallel", "parallel", "arbitrary")
    else:
        grid = (B, nh, T // bq)
        kernel = functools.partial(_fwd_kernel_triton, causal=cfg.causal, scale=scale, bk=bk, nk=S // bk)
        q_spec = pl.BlockSpec((None, None, bq, D), lambda b, h, i: (b, h, i, 0))
        kv_spec = pl.BlockSpec((None, None, S, D), lambda b, h, i: (b, h // G, 0, 0))
        qid_spec = pl.BlockSpec((None, bq, 1), lambda b, h, i: (b, i, 0))
        kid_spec = pl.BlockSpec((None, 1, S), lambda b, h, i: (b, 0, 0))
        lse_spec = pl.BlockSpec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0))
        semantics = ("parallel",) * 3
    return _pallas.call(
        kernel, variant=cfg.variant, grid=grid, out_shape=out_shape, semantics=semantics, interpret=cfg.interpret,
        in_specs=[qid_spec, kid_spec, qid_spec, kid_spec, q_spec, kv_spec, kv_spec],
        out_specs=[q_spec, lse_spec],
        scratch=[_pallas.vmem((bq, 1), F32), _pallas.vmem((bq, 1), F32), _pallas.vmem((bq, D), F32)],
        name="flash_fwd", num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        cost=_cost(q, k, cfg, visible, FWD_MATMULS, q.size * jnp.dtype(out_dtype or q.dtype).itemsize),
    )(qseg, kseg, qpos, kpos, q, k, v)


# ---- backward -----------------------------------------------------------------------------------------------------
def _dq_kernel_tpu(qseg_ref, kseg_ref, qpos_ref, kpos_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref,
                   dq_sc, *, causal, scale):
    j = pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, F32)

    ids, needed = _tpu_pair(qseg_ref, kseg_ref, qpos_ref, kpos_ref, causal)

    @pl.when(needed)
    def _step():
        dq_sc[...] = _dq_step(dq_sc[...], q_ref[...], k_ref[...], v_ref[...], do_ref[...], lse_ref[...],
                              delta_ref[...], _mask(*ids, causal), scale)

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = dq_sc[...]


def _dq_kernel_triton(qseg_ref, kseg_ref, qpos_ref, kpos_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                      dq_ref, *, causal, scale, bk, nk):
    q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
    qs, qp = qseg_ref[...], qpos_ref[...]
    q_range = _range(qs, qp)

    def body(j, dq):
        sl = pl.ds(pl.multiple_of(j * bk, bk), bk)
        ks, kp = kseg_ref[:, sl], kpos_ref[:, sl]
        step = lambda a: _dq_step(a, q, k_ref[sl, :], v_ref[sl, :], do, lse, delta,
                                  _mask(qs, ks, qp, kp, causal), scale)
        return jax.lax.cond(_needed(q_range, _range(ks, kp), causal), step, lambda a: a, dq)

    dq_ref[...] = jax.lax.fori_loop(0, nk, body, jnp.zeros(q.shape, F32))


def _dkv_kernel_tpu(qseg_ref, kseg_ref, qpos_ref, kpos_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                    dk_ref, dv_ref, dk_sc, dv_sc, *, causal, scale):
    g, i = pl.program_id(3), pl.program_id(4)

    @pl.when((g == 0) & (i == 0))
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, F32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, F32)

    ids, needed = _tpu_pair(qseg_ref, kseg_ref, qpos_ref, kpos_ref, causal)

    @pl.when(needed)
    def _step():
        dk, dv = _dkv_step((dk_sc[...], dv_sc[...]), q_ref[...], k_ref[...], v_ref[...], do_ref[...], lse_ref[...],
                           delta_ref[...], _mask(*ids, causal), scale)
        dk_sc[...], dv_sc[...] = dk, dv

    @pl.when((g == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1))
    def _finish():
        dk_ref[...] = dk_sc[...]
        dv_ref[...] = dv_sc[...]


def _dkv_kernel_triton(qseg_ref, kseg_ref, qpos_ref, kpos_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                       dk_ref, dv_ref, *, causal, scale, bq, nq, G):
    k, v, ks, kp = k_ref[...], v_ref[...], kseg_ref[...], kpos_ref[...]
    k_range = _range(ks, kp)

    def body(gi, carry):  # gi walks the q blocks of all G query heads that share this kv head
        rows = pl.ds(pl.multiple_of(gi * bq, bq), bq)
        ids = pl.ds(pl.multiple_of(jax.lax.rem(gi, nq) * bq, bq), bq)  # lax.rem: jnp % does not lower to Triton
        qs, qp = qseg_ref[ids, :], qpos_ref[ids, :]
        step = lambda c: _dkv_step(c, q_ref[rows, :], k, v, do_ref[rows, :], lse_ref[rows, :], delta_ref[rows, :],
                                   _mask(qs, ks, qp, kp, causal), scale)
        return jax.lax.cond(_needed(_range(qs, qp), k_range, causal), step, lambda c: c, carry)

    zeros = jnp.zeros(k.shape, F32)
    dk, dv = jax.lax.fori_loop(0, G * nq, body, (zeros, zeros))
    dk_ref[...] = dk
    dv_ref[...] = dv


def _bwd_kernel_tpu(qseg_ref, kseg_ref, qpos_ref, kpos_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                    dq_ref, dk_ref, dv_ref, *, causal, scale, bk):
    """Grid (b, h, s, g, i, j): kv block j of superblock s against q block i of query head g. The f32 output blocks
    are the accumulators: dq's (partial of superblock s) stays in VMEM over the j steps of one q block, dk/dv's
    [sb, D] over all (g, i, j) of the superblock; each is written back once, when its block index moves on."""
    g, i, j = pl.program_id(3), pl.program_id(4), pl.program_id(5)

    @pl.when((g == 0) & (i == 0) & (j == 0))
    def _init_dkv():
        dk_ref[...] = jnp.zeros(dk_ref.shape, F32)
        dv_ref[...] = jnp.zeros(dv_ref.shape, F32)

    @pl.when(j == 0)
    def _init_dq():
        dq_ref[...] = jnp.zeros(dq_ref.shape, F32)

    ids, needed = _tpu_pair(qseg_ref, kseg_ref, qpos_ref, kpos_ref, causal)

    @pl.when(needed)
    def _step():
        rows = pl.ds(pl.multiple_of(j * bk, bk), bk)
        (dk, dv), dq = _fused_step((dk_ref[rows, :], dv_ref[rows, :]), q_ref[...], k_ref[...], v_ref[...],
                                   do_ref[...], lse_ref[...], delta_ref[...], _mask(*ids, causal), scale)
        dk_ref[rows, :] = dk
        dv_ref[rows, :] = dv
        dq_ref[...] += dq


def _bwd_kernel_triton(qseg_ref, kseg_ref, qpos_ref, kpos_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref,
                       dq_in_ref, dq_ref, dk_ref, dv_ref, *, causal, scale, bq, nq, G):
    """Grid (b, h, kv block) as flash_dkv; dk/dv in registers, each q block's dq contribution atomically added to the
    kv head's grouped dq rows (dq_ref aliases dq_in_ref, zeros)."""
    del dq_in_ref
    k, v, ks, kp = k_ref[...], v_ref[...], kseg_ref[...], kpos_ref[...]
    k_range = _range(ks, kp)

    def body(gi, carry):
        rows = pl.ds(pl.multiple_of(gi * bq, bq), bq)
        ids = pl.ds(pl.multiple_of(jax.lax.rem(gi, nq) * bq, bq), bq)
        qs, qp = qseg_ref[ids, :], qpos_ref[ids, :]

        def step(c):
            c, dq = _fused_step(c, q_ref[rows, :], k, v, do_ref[rows, :], lse_ref[rows, :], delta_ref[rows, :],
                                _mask(qs, ks, qp, kp, causal), scale)
            pltriton.atomic_add(dq_ref, (rows, slice(None)), dq)
            return c
        return jax.lax.cond(_needed(_range(qs, qp), k_range, causal), step, lambda c: c, carry)

    zeros = jnp.zeros(k.shape, F32)
    dk, dv = jax.lax.fori_loop(0, G * nq, body, (zeros, zeros))
    dk_ref[...] = dk
    dv_ref[...] = dv


DKV_VMEM_BYTES = 8 * 2 ** 20  # TPU fused backward: the f32 dk/dv superblocks (two single-buffered output blocks)


def superblock(cfg: FlashConfig, S, D) -> int:
    """Keys per superblock of the TPU fused backward: the largest multiple of the kv block that divides S and is at
    most cfg.kv_superblock, or (0) keeps the f32 dk/dv output blocks (2 x sb x D x 4 bytes) within DKV_VMEM_BYTES:
    4096 keys at D = 256 (with the q/k/v/dO blocks, ~9 MiB of VMEM; double-buffered dk/dv would pass v5p's 16 MiB)."""
    bk = min(cfg.block_k, S)
    cap = cfg.kv_superblock or DKV_VMEM_BYTES // (2 * D * 4)
    nk = S // bk
    return bk * max(d for d in range(1, nk + 1) if nk % d == 0 and d * bk <= max(cap, bk))


def _group(x, nkv):
    """[B, nh, T, X] -> [B, nkv, G*T, X] (free reshape): the G query heads of kv head h are rows [g*T, (g+1)*T)."""
    B, nh, T, X = x.shape
    return x.reshape(B, nkv, nh // nkv * T, X)


def _bwd_fused(q, k, v, qseg, kseg, qpos, kpos, do, lse, delta, cfg: FlashConfig, visible):
    B, nh, T, D = q.shape
    nkv, S = k.shape[1], k.shape[2]
    G = nh // nkv
    bq, bk = _blocks(cfg, T, S)
    nq, nk = T // bq, S // bk
    scale = D ** -0.5
    qg, dog, lseg, deltag = (_group(x, nkv) for x in (q, do, lse, delta))
    args = (qseg, kseg, qpos, kpos, qg, k, v, dog, lseg, deltag)
    kv_out = [_pallas.out_struct(k.shape, F32, k)] * 2
    if cfg.variant == "tpu":
        sb = superblock(cfg, S, D)
        ns, nj = S // sb, sb // bk
        q_spec = pl.BlockSpec((None, None, bq, D), lambda b, h, s, g, i, j: (b, h, g * nq + i, 0))
        r_spec = pl.BlockSpec((None, None, bq, 1), lambda b, h, s, g, i, j: (b, h, g * nq + i, 0))
        kv_spec = pl.BlockSpec((None, None, bk, D), lambda b, h, s, g, i, j: (b, h, s * nj + j, 0))
        qid_spec = pl.BlockSpec((None, bq, 1), lambda b, h, s, g, i, j: (b, i, 0))
        kid_spec = pl.BlockSpec((None, 1, bk), lambda b, h, s, g, i, j: (b, 0, s * nj + j))
        dq_spec = pl.BlockSpec((None, None, None, bq, D), lambda b, h, s, g, i, j: (s, b, h, g * nq + i, 0))
        dkv_spec = pl.BlockSpec((None, None, sb, D), lambda b, h, s, g, i, j: (b, h, s, 0),
                                pipeline_mode=pl.Buffered(1))
        dq, dk, dv = _pallas.call(
            functools.partial(_bwd_kernel_tpu, causal=cfg.causal, scale=scale, bk=bk),
            variant="tpu", grid=(B, nkv, ns, G, nq, nj),
            in_specs=[qid_spec, kid_spec, qid_spec, kid_spec, q_spec, kv_spec, kv_spec, q_spec, r_spec, r_spec],
            out_specs=[dq_spec, dkv_spec, dkv_spec],
            out_shape=[_pallas.out_struct((ns,) + qg.shape, F32, q)] + kv_out,
            semantics=("parallel",) * 3 + ("arbitrary",) * 3, interpret=cfg.interpret, name="flash_bwd",
            cost=_cost(q, k, cfg, visible, FUSED_BWD_MATMULS, (ns * q.size + 2 * k.size) * 4))(*args)
        dq = dq[0] if ns == 1 else dq.sum(0)
    else:
        q_spec = pl.BlockSpec((None, None, G * T, D), lambda b, h, j: (b, h, 0, 0))
        r_spec = pl.BlockSpec((None, None, G * T, 1), lambda b, h, j: (b, h, 0, 0))
        kv_spec = pl.BlockSpec((None, None, bk, D), lambda b, h, j: (b, h, j, 0))
        qid_spec = pl.BlockSpec((None, T, 1), lambda b, h, j: (b, 0, 0))
        kid_spec = pl.BlockSpec((None, 1, bk), lambda b, h, j: (b, 0, j))
        dq_out = _pallas.out_struct(qg.shape, F32, q)
        dq, dk, dv = pl.pallas_call(  # _pallas.call has no input_output_aliases
            functools.partial(_bwd_kernel_triton, causal=cfg.causal, scale=scale, bq=bq, nq=nq, G=G),
            grid=(B, nkv, nk),
            in_specs=[qid_spec, kid_spec, qid_spec, kid_spec, q_spec, kv_spec, kv_spec, q_spec, r_spec, r_spec,
                      q_spec],
            out_specs=[q_spec, kv_spec, kv_spec], out_shape=[dq_out] + kv_out, input_output_aliases={10: 0},
            compiler_params=_pallas.compiler_params("triton", (), cfg.num_warps, cfg.num_stages),
            interpret=cfg.interpret, name="flash_bwd",
            cost_estimate=_cost(q, k, cfg, visible, FUSED_BWD_MATMULS, (q.size + 2 * k.size) * 4),
        )(*args, jnp.zeros_like(qg, F32))  # zeros_like: q's manual axes (check_vma=True)
    return dq.reshape(q.shape), dk, dv


def _bwd_two_kernels(q, k, v, qseg, kseg, qpos, kpos, do, lse, delta, cfg: FlashConfig, visible):
    """flash_dq (grid over q blocks, kv loop) then flash_dkv (grid over kv blocks, loop over the G*nq q blocks)."""
    B, nh, T, D = q.shape
    nkv, S = k.shape[1], k.shape[2]
    G = nh // nkv
    bq, bk = _blocks(cfg, T, S)
    nq, nk = T // bq, S // bk
    scale = D ** -0.5
    common = dict(variant=cfg.variant, interpret=cfg.interpret, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    dq_cost = _cost(q, k, cfg, visible, DQ_MATMULS, q.size * 4)
    dkv_cost = _cost(q, k, cfg, visible, DKV_MATMULS, 2 * k.size * 4)
    args = (qseg, kseg, qpos, kpos)
    if cfg.variant == "tpu":
        q_spec = pl.BlockSpec((None, None, bq, D), lambda b, h, i, j: (b, h, i, 0))
        r_spec = pl.BlockSpec((None, None, bq, 1), lambda b, h, i, j: (b, h, i, 0))
        kv_spec = pl.BlockSpec((None, None, bk, D), lambda b, h, i, j: (b, h // G, j, 0))
        qid_spec = pl.BlockSpec((None, bq, 1), lambda b, h, i, j: (b, i, 0))
        kid_spec = pl.BlockSpec((None, 1, bk), lambda b, h, i, j: (b, 0, j))
        dq = _pallas.call(
            functools.partial(_dq_kernel_tpu, causal=cfg.causal, scale=scale), grid=(B, nh, nq, nk),
            in_specs=[qid_spec, kid_spec, qid_spec, kid_spec, q_spec, kv_spec, kv_spec, q_spec, r_spec, r_spec],
            out_specs=q_spec, out_shape=_pallas.out_struct(q.shape, F32, q),
            semantics=("parallel", "parallel", "parallel", "arbitrary"), scratch=[_pallas.vmem((bq, D), F32)],
            name="flash_dq", cost=dq_cost, **common)(*args, q, k, v, do, lse, delta)
    else:
        q_spec = pl.BlockSpec((None, None, bq, D), lambda b, h, i: (b, h, i, 0))
        r_spec = pl.BlockSpec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0))
        kv_spec = pl.BlockSpec((None, None, S, D), lambda b, h, i: (b, h // G, 0, 0))
        qid_spec = pl.BlockSpec((None, bq, 1), lambda b, h, i: (b, i, 0))
        kid_spec = pl.BlockSpec((None, 1, S), lambda b, h, i: (b, 0, 0))
        dq = _pallas.call(
            functools.partial(_dq_kernel_triton, causal=cfg.causal, scale=scale, bk=bk, nk=nk), grid=(B, nh, nq),
            in_specs=[qid_spec, kid_spec, qid_spec, kid_spec, q_spec, kv_spec, kv_spec, q_spec, r_spec, r_spec],
            out_specs=q_spec, out_shape=_pallas.out_struct(q.shape, F32, q), semantics=("parallel",) * 3,
            name="flash_dq", cost=dq_cost, **common)(*args, q, k, v, do, lse, delta)

    qg, dog, lseg, deltag = (_group(x, nkv) for x in (q, do, lse, delta))
    kv_out = [_pallas.out_struct(k.shape, F32, k)] * 2
    if cfg.variant == "tpu":
        q_spec = pl.BlockSpec((None, None, bq, D), lambda b, h, j, g, i: (b, h, g * nq + i, 0))
        r_spec = pl.BlockSpec((None, None, bq, 1), lambda b, h, j, g, i: (b, h, g * nq + i, 0))
        kv_spec = pl.BlockSpec((None, None, bk, D), lambda b, h, j, g, i: (b, h, j, 0))
        qid_spec = pl.BlockSpec((None, bq, 1), lambda b, h, j, g, i: (b, i, 0))
        kid_spec = pl.BlockSpec((None, 1, bk), lambda b, h, j, g, i: (b, 0, j))
        dk, dv = _pallas.call(
            functools.partial(_dkv_kernel_tpu, causal=cfg.causal, scale=scale), grid=(B, nkv, nk, G, nq),
            in_specs=[qid_spec, kid_spec, qid_spec, kid_spec, q_spec, kv_spec, kv_spec, q_spec, r_spec, r_spec],
            out_specs=[kv_spec, kv_spec], out_shape=kv_out,
            semantics=("parallel", "parallel", "parallel", "arbitrary", "arbitrary"),
            scratch=[_pallas.vmem((bk, D), F32), _pallas.vmem((bk, D), F32)],
            name="flash_dkv", cost=dkv_cost, **common)(*args, qg, k, v, dog, lseg, deltag)
    else:
        q_spec = pl.BlockSpec((None, None, G * T, D), lambda b, h, j: (b, h, 0, 0))
        r_spec = pl.BlockSpec((None, None, G * T, 1), lambda b, h, j: (b, h, 0, 0))
        kv_spec = pl.BlockSpec((None, None, bk, D), lambda b, h, j: (b, h, j, 0))
        qid_spec = pl.BlockSpec((None, T, 1), lambda b, h, j: (b, 0, 0))
        kid_spec = pl.BlockSpec((None, 1, bk), lambda b, h, j: (b, 0, j))
        dk, dv = _pallas.call(
            functools.partial(_dkv_kernel_triton, causal=cfg.causal, scale=scale, bq=bq, nq=nq, G=G),
            grid=(B, nkv, nk),
            in_specs=[qid_spec, kid_spec, qid_spec, kid_spec, q_spec, kv_spec, kv_spec, q_spec, r_spec, r_spec],
            out_specs=[kv_spec, kv_spec], out_shape=kv_out, semantics=("parallel",) * 3,
            name="flash_dkv", cost=dkv_cost, **common)(*args, qg, k, v, dog, lseg, deltag)
    return dq, dk, dv


def flash_bwd(q, k, v, qseg, kseg, qpos, kpos, do, lse, delta, cfg: FlashConfig, visible=None):
    """Block backward from the global lse and delta = sum(o * do) [B,nh,T,1]. Returns f32 (dq, dk, dv); dk and dv
    are summed over the query heads of each kv head inside the kernel. `visible`: see `visited_pairs`.
    cfg.fused_bwd: one kernel "flash_bwd" (5 matmuls per block pair), else "flash_dq" then "flash_dkv" (3 + 4)."""
    if cfg.fused_bwd:
        return _bwd_fused(q, k, v, qseg, kseg, qpos, kpos, do, lse, delta, cfg, visible)
    return _bwd_two_kernels(q, k, v, qseg, kseg, qpos, kpos, do, lse, delta, cfg, visible)


# ---- layout -------------------------------------------------------------------------------------------------------
def _round_up(x, m):
    return -(-x // m) * m


def padded_length(T, cfg: FlashConfig):
    """T rounded up so that both blocks (clamped to T) divide it."""
    return _round_up(T, max(min(cfg.block_q, T), min(cfg.block_k, T)))


def to_kernel_layout(q, k, v, segment_ids, positions, cfg: FlashConfig):
    """Model layout ([B,T,nh,D], [B,T,nkv,D], ids [B,T]) -> padded kernel layout (see the module docstring)."""
    T = q.shape[1]
    Tp = padded_length(T, cfg)
    pad = Tp - T
    heads = lambda x: jnp.swapaxes(jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))), 1, 2)
    ids = lambda x, fill: jnp.pad(x.astype(jnp.int32), ((0, 0), (0, pad)), constant_values=fill)
    qseg, kseg = ids(segment_ids, Q_PAD)[:, :, None], ids(segment_ids, KV_PAD)[:, None, :]
    pos = ids(positions, 0)
    return heads(q), heads(k), heads(v), qseg, kseg, pos[:, :, None], pos[:, None, :]


def from_kernel_layout(x, T):
    return jnp.swapaxes(x, 1, 2)[:, :T]


def float0_like(x):
    return np.zeros(x.shape, jax.dtypes.float0)


# ---- single-device op ---------------------------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _flash(q, k, v, qseg, kseg, qpos, kpos, cfg):
    return flash_fwd(q, k, v, qseg, kseg, qpos, kpos, cfg)[0]


CORE_NAME = "attention_core"  # jax.checkpoint_policies.save_only_these_names(CORE_NAME) keeps o and lse


def saveable(o, lse):
    """Names the attention output and its lse (the residuals the backward needs that only the kernel's forward
    computes), so a remat policy can save them instead of re-running the forward kernel in the backward pass."""
    return checkpoint_name(o, CORE_NAME), checkpoint_name(lse, CORE_NAME)


def _flash_vjp_fwd(q, k, v, qseg, kseg, qpos, kpos, cfg):
    o, lse = saveable(*flash_fwd(q, k, v, qseg, kseg, qpos, kpos, cfg))
    return o, (q, k, v, qseg, kseg, qpos, kpos, o, lse)


def _flash_vjp_bwd(cfg, res, do):
    q, k, v, qseg, kseg, qpos, kpos, o, lse = res
    delta = jnp.sum(o.astype(F32) * do.astype(F32), axis=-1, keepdims=True)
    dq, dk, dv = flash_bwd(q, k, v, qseg, kseg, qpos, kpos, do.astype(q.dtype), lse, delta, cfg)
    ints = tuple(float0_like(x) for x in (qseg, kseg, qpos, kpos))
    return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)) + ints


_flash.defvjp(_flash_vjp_fwd, _flash_vjp_bwd)


def flash_attention(q, k, v, *, segment_ids=None, positions=None, causal=True, impl=None, block_q=None,
                    block_k=None, interpret=None):
    """Softmax attention, GQA without repeating kv. q [B,T,nh,D], k/v [B,T,nkv,D], ids [B,T] -> o [B,T,nh,D].

    Query t sees key s iff segment_ids match and (causal) positions[t] >= positions[s]; positions default to the
    index. impl: "xla" (kernels/reference), "xla_cpu" (kernels/attention/cpu.py), "pallas_tpu", "pallas_gpu", or
    None/"auto" for the platform default
    (kernels/backend.py, op "attention"; $KERNELS_ATTENTION_IMPL overrides)."""
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of kv heads ({k.shape[2]})")

    def pallas(name):
        cfg = make_config(name, causal, block_q, block_k, interpret)
        seg, pos = ref.default_ids(q, segment_ids, positions)
        return from_kernel_layout(_flash(*to_kernel_layout(q, k, v, seg, pos, cfg), cfg), q.shape[1])

    table = {"pallas_tpu": lambda: pallas("pallas_tpu"), "pallas_gpu": lambda: pallas("pallas_gpu"),
             "xla_cpu": lambda: cpu.flash_attention(q, k, v, segment_ids=segment_ids, positions=positions,
                                                    causal=causal),
             "xla": lambda: ref.flash_attention(q, k, v, segment_ids=segment_ids, positions=positions,
                                                causal=causal)}
    return backend.dispatch("attention", table, impl)
