"""Flash and ring attention kernels against the naive masked reference (docs/spec/kernels.md §4, §6.5).

CPU: Pallas in interpret mode, fp32 unless noted, few grid steps (blocks of 128, short sequences). Gradients use
random cotangents (a uniform one hides softmax errors). The cross-lowering tests lower for TPU and an abstract H100
at production shapes without executing (docs/spec/kernels.md §6.4).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from cross_lowering import custom_calls, lower_text
from kernels import backend
from kernels.attention import cpu, flash, flash_attention, load_balance, ring_attention
from kernels.reference import attention as ref

F32 = jnp.float32
AXIS = "sequence"


def _qkv(T, D, nh, nkv, *, dtype=F32, B=1, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    q = jax.random.normal(ks[0], (B, T, nh, D), F32).astype(dtype)
    k = jax.random.normal(ks[1], (B, T, nkv, D), F32).astype(dtype)
    v = jax.random.normal(ks[2], (B, T, nkv, D), F32).astype(dtype)
    do = jax.random.normal(ks[3], (B, T, nh, D), F32).astype(dtype)
    return q, k, v, do


def _segments(kind, T, B=1):
    """none; 3 documents; short documents with boundaries inside a 128-block and a padding tail (id 0). A second
    row, if asked for, holds the other layout, so batch rows differ."""
    if kind == "none":
        return None

    def row(kind):
        if kind == "docs":
            return np.repeat([1, 2, 3], [T // 3, T // 3, T - 2 * (T // 3)])
        return np.repeat([1, 2, 3, 4, 0], [37, 5, 61, T - 123, 20])
    other = "inside_block" if kind == "docs" else "docs"
    return jnp.asarray(np.stack([row(kind), row(other)][:B]), jnp.int32)


def _value_and_grads(f, q, k, v, do):
    o, vjp = jax.vjp(f, q, k, v)
    return (o, *vjp(do))


def _flash_with(impl, *, fused=True, kv_superblock=0, segment_ids=None, causal=True, block_q=None, block_k=None):
    """flash_attention(impl=...) with the backward picked by FlashConfig: fused ("flash_bwd") or flash_dq + flash_dkv;
    kv_superblock sets the TPU fused kernel's dk/dv superblock (several superblocks: dq summed from partials)."""
    def f(q, k, v):
        cfg = dataclasses.replace(flash.make_config(impl, causal, block_q, block_k), fused_bwd=fused,
                                  kv_superblock=kv_superblock)
        seg, pos = ref.default_ids(q, segment_ids, None)
        return flash.from_kernel_layout(flash._flash(*flash.to_kernel_layout(q, k, v, seg, pos, cfg), cfg), q.shape[1])
    return f


def _assert_close(got, want, atol, rtol=None, names=("o", "dq", "dk", "dv")):
    for name, a, b in zip(names, got, want):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=atol,
                                   rtol=atol / 10 if rtol is None else rtol, err_msg=name)


# Every value of T, D, heads, causal and segments appears, most pairs too; each case checks forward and gradients.
FLASH_CASES = [(128, 64, 4, 4, True, "none"), (256, 256, 4, 2, True, "docs"), (128, 256, 4, 1, False, "inside_block"),
               (256, 64, 4, 1, True, "inside_block"), (256, 64, 4, 2, False, "none"), (128, 256, 4, 4, False, "docs")]


@pytest.mark.parametrize("T,D,nh,nkv,causal,segments", FLASH_CASES)
def test_flash_matches_reference(T, D, nh, nkv, causal, segments):
    B = 1 if segments == "none" else 2
    q, k, v, do = _qkv(T, D, nh, nkv, B=B)
    seg = _segments(segments, T, B)
    kw = dict(segment_ids=seg, causal=causal)
    got = jax.jit(lambda *a: _value_and_grads(lambda q, k, v: flash_attention(q, k, v, impl="pallas_tpu", **kw),
                                              *a))(q, k, v, do)
    want = _value_and_grads(lambda q, k, v: ref.flash_attention(q, k, v, **kw), q, k, v, do)
    _assert_close(got, want, atol=2e-5)


@pytest.mark.parametrize("T,nh,nkv,causal,segments", [(600, 4, 2, True, "inside_block"), (300, 4, 1, True, "docs"),
                                                       (256, 2, 2, False, "docs"), (128, 4, 4, True, "none")])
def test_cpu_query_blocks_match_reference(T, nh, nkv, causal, segments):
    """kernels/attention/cpu.py ("xla_cpu", the CPU default): uneven query blocks (600 = 4 blocks of 150), a block
    border inside a document, padding (segment 0), GQA; forward and gradients against the reference."""
    B = 1 if segments == "none" else 2
    q, k, v, do = _qkv(T, 32, nh, nkv, B=B, seed=T)
    kw = dict(segment_ids=_segments(segments, T, B), causal=causal)
    assert cpu.num_blocks(T, causal) == (min(cpu.MAX_BLOCKS, T // cpu.MIN_BLOCK) if causal else 1)
    got = jax.jit(lambda *a: _value_and_grads(lambda q, k, v: flash_attention(q, k, v, impl="xla_cpu", **kw),
                                              *a))(q, k, v, do)
    want = _value_and_grads(lambda q, k, v: ref.flash_attention(q, k, v, **kw), q, k, v, do)
    _assert_close(got, want, atol=2e-5)


def test_cpu_attention_is_the_cpu_default_and_leaves_explicit_positions_to_the_reference():
    assert backend.candidates("attention", platform_name="cpu") == ("xla_cpu", "xla")
    q, k, v, _ = _qkv(256, 16, 2, 1)
    pos = jnp.asarray(np.random.default_rng(0).permutation(256)[None], jnp.int32)  # any token order
    got = flash_attention(q, k, v, positions=pos, impl="xla_cpu")
    np.testing.assert_allclose(got, ref.flash_attention(q, k, v, positions=pos), atol=2e-6)
    with pytest.raises(NotImplementedError, match="positions"):
        cpu.flash_attention(q, k, v, positions=pos)


@pytest.mark.parametrize("nh,nkv,segments", [(4, 4, "docs"), (4, 2, "inside_block")])
def test_flash_triton_variant_matches_reference_with_padding(nh, nkv, segments):
    """The GPU variant (in-kernel kv loop over whole-sequence refs) computes the same thing as the TPU one, also when
    T = 200 is padded to whole blocks (padded keys carry a segment id no query has)."""
    q, k, v, do = _qkv(200, 64, nh, nkv, B=2, seed=1)
    kw = dict(segment_ids=_segments(segments, 200, B=2), causal=True)
    got = jax.jit(lambda *a: _value_and_grads(
        lambda q, k, v: flash_attention(q, k, v, impl="pallas_gpu", block_q=128, block_k=64, **kw), *a))(q, k, v, do)
    want = _value_and_grads(lambda q, k, v: ref.flash_attention(q, k, v, **kw), q, k, v, do)
    _assert_close(got, want, atol=2e-5)


@pytest.mark.parametrize("impl", ["pallas_tpu", "pallas_gpu"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two_kernels"])
@pytest.mark.parametrize("causal,segments", [(True, "docs"), (False, "inside_block")])
def test_flash_backwards_match_reference(impl, fused, causal, segments):
    """Both backwards of both variants, blocks of 64: T = 200 padded to 256, GQA, packed segments that leave block
    pairs skipped (also without the causal mask); the TPU fused kernel in two dk/dv superblocks of 128 keys, its dq
    summed from two partials."""
    q, k, v, do = _qkv(200, 32, 4, 2, B=2, seed=3)
    kw = dict(segment_ids=_segments(segments, 200, B=2), causal=causal)
    f = _flash_with(impl, fused=fused, kv_superblock=128, block_q=64, block_k=64, **kw)
    got = jax.jit(lambda *a: _value_and_grads(f, *a))(q, k, v, do)
    want = _value_and_grads(lambda q, k, v: ref.flash_attention(q, k, v, **kw), q, k, v, do)
    _assert_close(got, want, atol=2e-5)


def test_flash_superblock_divides_the_keys_and_keeps_dkv_within_the_vmem_budget():
    cfg = flash.make_config("pallas_tpu", True)
    assert flash.superblock(cfg, 16384, 256) == 4096 and flash.superblock(cfg, 16384, 128) == 8192
    assert flash.superblock(cfg, 1024, 256) == 1024 and flash.superblock(cfg, 3 * 2048, 256) == 3072
    assert flash.superblock(dataclasses.replace(cfg, kv_superblock=256), 1024, 64) == 256
    assert flash.superblock(dataclasses.replace(cfg, kv_superblock=300), 384, 64) == 128  # largest divisor <= 300


def test_flash_bf16_within_1e_2_of_fp32_reference_on_same_inputs():
    q, k, v, do = _qkv(128, 256, 4, 2, dtype=jnp.bfloat16, seed=2)
    kw = dict(segment_ids=_segments("docs", 128), causal=True)
    got = jax.jit(lambda *a: _value_and_grads(lambda q, k, v: flash_attention(q, k, v, impl="pallas_tpu", **kw),
                                              *a))(q, k, v, do)
    up = lambda x: x.astype(F32)
    want = _value_and_grads(lambda q, k, v: ref.flash_attention(q, k, v, **kw), up(q), up(k), up(v), up(do))
    assert all(x.dtype == jnp.bfloat16 for x in got)
    _assert_close(got[:1], want[:1], atol=1e-2, rtol=1e-2)
    _assert_close(got[1:], want[1:], atol=2e-2, rtol=2e-2, names=("dq", "dk", "dv"))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two_kernels"])
def test_fully_masked_rows_give_zero_output_lse_neg_and_finite_grads(fused):
    """Queries whose segment has no key (a ring hop, a padded key block) end with o = 0, lse = NEG, never NaN."""
    T, D = 128, 64
    q, k, v, do = _qkv(T, D, 4, 2, seed=4)
    cfg = dataclasses.replace(flash.make_config("pallas_tpu", True), fused_bwd=fused)
    q_ids = jnp.asarray(np.where(np.arange(T) < 40, 7, 1)[None], jnp.int32)  # rows < 40: segment 7 has no key
    kv_ids = jnp.ones((1, T), jnp.int32)
    pos = jnp.arange(T, dtype=jnp.int32)[None]
    qt, kt, vt, *_ = flash.to_kernel_layout(q, k, v, kv_ids, pos, cfg)
    qseg, kseg, qpos, kpos = q_ids[:, :, None], kv_ids[:, None, :], pos[:, :, None], pos[:, None, :]
    o, lse = jax.jit(lambda *a: flash.flash_fwd(*a, cfg))(qt, kt, vt, qseg, kseg, qpos, kpos)
    o_want, lse_want = ref.attention_with_lse(q, k, v, ref.attention_mask(q_ids, kv_ids, pos, pos, True))
    np.testing.assert_allclose(flash.from_kernel_layout(o, T), o_want, atol=2e-5)
    np.testing.assert_allclose(flash.from_kernel_layout(lse[..., 0], T), lse_want, rtol=1e-6)
    assert np.all(np.asarray(o)[:, :, :40] == 0) and np.all(np.asarray(lse)[:, :, :40] == ref.NEG)
    dot = jnp.swapaxes(do, 1, 2)
    delta = jnp.sum(o * dot, axis=-1, keepdims=True)
    grads = jax.jit(lambda *a: flash.flash_bwd(*a, cfg))(qt, kt, vt, qseg, kseg, qpos, kpos, dot, lse, delta)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert np.all(np.asarray(grads[0])[:, :, :40] == 0)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two_kernels"])
def test_flash_tpu_variant_under_the_tpu_interpreter(monkeypatch, fused):
    """KERNELS_INTERPRET=tpu simulates TPU memory (uninitialised buffers are NaN, DMAs, races): the grid-carried
    scratch and the write-once output blocks of the TPU variant behave as on the chip; the fused backward's output
    blocks, accumulated in place (dk/dv single-buffered), over two superblocks."""
    monkeypatch.setenv("KERNELS_INTERPRET", "tpu")
    q, k, v, do = _qkv(256, 64, 2, 1, seed=8)
    kw = dict(segment_ids=_segments("docs", 256), causal=True)
    got = _value_and_grads(_flash_with("pallas_tpu", fused=fused, kv_superblock=128, **kw), q, k, v, do)
    want = _value_and_grads(lambda q, k, v: ref.flash_attention(q, k, v, **kw), q, k, v, do)
    _assert_close(got, want, atol=2e-5)


# ---- ring attention -----------------------------------------------------------------------------------------------
def _mesh(n):
    return jax.make_mesh((n,), (AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def _ring(n, scheme, impl="pallas_tpu", causal=True):
    """Global-layout function: reorder for the scheme, shard over n devices, ring, restore the order."""
    T = 512
    perm = np.arange(T) if scheme is None else load_balance.permutation(T, n, scheme)
    body = lambda q, k, v, s, p: ring_attention(q, k, v, axis_name=AXIS, segment_ids=s, positions=p,
                                                causal=causal, impl=impl)
    sm = jax.shard_map(body, mesh=_mesh(n), in_specs=(P(None, AXIS),) * 5, out_specs=P(None, AXIS),
                       check_vma=False)  # interpreted kernels fail the vma check (docs/spec/kernels.md §2, gotcha 3)

    def f(q, k, v, seg):
        r = lambda x: load_balance.reorder(x, perm)
        pos = jnp.asarray(perm, jnp.int32)[None]
        return load_balance.restore(sm(r(q), r(k), r(v), r(seg), pos), perm)
    return f


RING_SEGMENTS = np.concatenate([np.full(100, 1), np.full(200, 2), np.full(212, 3)])  # cross 128/256/384 borders


@pytest.mark.parametrize("n,scheme,impl", [(2, None, "pallas_tpu"), (2, "striped", "pallas_tpu"),
                                           (4, None, "pallas_tpu"), (4, "zigzag", "pallas_tpu"), (4, "zigzag", "xla"),
                                           (2, None, "xla")])
def test_ring_equals_single_device_attention(n, scheme, impl):
    q, k, v, do = _qkv(512, 64, 4, 2, seed=5)
    seg = jnp.asarray(RING_SEGMENTS[None], jnp.int32)
    f = _ring(n, scheme, impl)
    got = jax.jit(lambda *a: _value_and_grads(lambda q, k, v: f(q, k, v, seg), *a))(q, k, v, do)
    want = _value_and_grads(lambda q, k, v: ref.flash_attention(q, k, v, segment_ids=seg), q, k, v, do)
    _assert_close(got, want, atol=3e-5)


def test_ring_non_causal_with_one_kv_head():
    q, k, v, do = _qkv(512, 64, 4, 1, seed=6)
    seg = jnp.asarray(RING_SEGMENTS[None], jnp.int32)
    f = _ring(2, None, causal=False)
    got = jax.jit(lambda *a: _value_and_grads(lambda q, k, v: f(q, k, v, seg), *a))(q, k, v, do)
    want = _value_and_grads(lambda q, k, v: ref.flash_attention(q, k, v, segment_ids=seg, causal=False), q, k, v, do)
    _assert_close(got, want, atol=3e-5)


def test_ring_on_one_device_is_the_flash_kernel():
    q, k, v, do = _qkv(512, 64, 4, 2, seed=7)
    seg = jnp.asarray(RING_SEGMENTS[None], jnp.int32)
    got = jax.jit(lambda *a: _value_and_grads(lambda q, k, v: _ring(1, None)(q, k, v, seg), *a))(q, k, v, do)
    flash_ = jax.jit(lambda *a: _value_and_grads(
        lambda q, k, v: flash_attention(q, k, v, segment_ids=seg, impl="pallas_tpu"), *a))(q, k, v, do)
    _assert_close(got, flash_, atol=1e-6, rtol=1e-6)
    want = _value_and_grads(lambda q, k, v: ref.flash_attention(q, k, v, segment_ids=seg), q, k, v, do)
    _assert_close(got, want, atol=3e-5)


def test_load_balance_orders_are_permutations_that_balance_causal_work():
    T, n = 64, 4
    for scheme in load_balance.SCHEMES:
        perm = load_balance.permutation(T, n, scheme)
        assert sorted(perm) == list(range(T))
        x = np.arange(T)[None]
        np.testing.assert_array_equal(load_balance.restore(load_balance.reorder(x, perm), perm), x)
        work = [int(np.sum(s + 1)) for s in perm.reshape(n, T // n)]  # keys seen per shard under a causal mask
        assert max(work) - min(work) <= T, (scheme, work)  # contiguous: 768
    contiguous = [int(np.sum(s + 1)) for s in np.arange(T).reshape(n, T // n)]
    assert max(contiguous) - min(contiguous) > 10 * T


# ---- cross-lowering -----------------------------------------------------------------------------------------------
# Production shapes: head_dim 256, 16 q-heads and 2 kv-heads, bf16.
_S = jax.ShapeDtypeStruct
_PROD = lambda T: (_S((1, T, 16, 256), jnp.bfloat16), _S((1, T, 2, 256), jnp.bfloat16),
                   _S((1, T, 2, 256), jnp.bfloat16), _S((1, T), jnp.int32), _S((1, T, 16, 256), jnp.bfloat16))


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "two_kernels"])
def test_flash_lowers_at_production_shapes(platform, fused):
    impl = {"tpu": "pallas_tpu", "cuda": "pallas_gpu"}[platform]

    def f(q, k, v, seg, do):
        return _value_and_grads(_flash_with(impl, fused=fused, segment_ids=seg), q, k, v, do)
    assert custom_calls(lower_text(f, _PROD(4096), platform), platform) == (2 if fused else 3)  # fwd, bwd | dq, dkv


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_ring_lowers_at_production_shapes(platform):
    n = 4
    body = lambda q, k, v, s: ring_attention(q, k, v, axis_name=AXIS, segment_ids=s)

    def f(q, k, v, seg, do):
        sm = jax.shard_map(body, in_specs=(P(None, AXIS),) * 4, out_specs=P(None, AXIS), check_vma=False)
        return _value_and_grads(lambda q, k, v: sm(q, k, v, seg), q, k, v, do)
    text = lower_text(f, _PROD(4 * 4096), platform, n)
    assert custom_calls(text, platform) >= 3 and "collective_permute" in text.replace("-", "_")


def _kernel_costs(fn, *args):
    """{pallas_call name: cost_estimate flops} of every kernel traced by fn (forward and backward)."""
    out = {}

    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "pallas_call":
                out[e.params["name"]] = e.params["cost_estimate"].flops
            for v in e.params.values():
                inner = getattr(v, "jaxpr", None)
                if inner is not None:
                    walk(getattr(inner, "jaxpr", inner))

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return out


@pytest.mark.parametrize("impl", ["pallas_tpu", "pallas_gpu"])
def test_flash_cost_estimates_count_only_the_blocks_on_and_below_the_diagonal(impl):
    """T = 4 blocks of 64: causal runs 1+2+3+4 = 10 of 16 block pairs; fwd does 2, dq 3, dkv 4, the fused backward 5
    [64, 64, D] matmuls per pair and query head (5/7 of dq + dkv), also in several TPU superblocks."""
    B, T, nh, nkv, D, b = 1, 256, 4, 2, 32, 64
    q = jax.ShapeDtypeStruct((B, T, nh, D), jnp.float32)
    kv = jax.ShapeDtypeStruct((B, T, nkv, D), jnp.float32)
    pair = B * nh * 2 * b * b * D
    for causal, pairs in ((True, 10), (False, 16)):
        costs = {}
        for fused, sb in ((False, 0), (True, 0), (True, 2 * b)):
            f = _flash_with(impl, fused=fused, kv_superblock=sb, causal=causal, block_q=b, block_k=b)
            costs[fused, sb] = _kernel_costs(jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2)), q, kv, kv)
        two, fused = costs[False, 0], costs[True, 0]
        assert two == {"flash_fwd": pairs * 2 * pair, "flash_dq": pairs * 3 * pair, "flash_dkv": pairs * 4 * pair}
        assert fused == costs[True, 2 * b] == {"flash_fwd": pairs * 2 * pair, "flash_bwd": pairs * 5 * pair}
        assert fused["flash_bwd"] * 7 == (two["flash_dq"] + two["flash_dkv"]) * 5


def test_ring_cost_estimates_add_up_to_the_single_device_causal_blocks():
    """4 shards in zig-zag order, 64-token blocks: the first hop's causal blocks plus half of every later hop's add up
    to the 36 block pairs on or below the diagonal of the whole 512-token sequence, the single-device count."""
    from a1jax.plan import program_flops
    q = jax.ShapeDtypeStruct((1, 512, 2, 32), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, 512, 1, 32), jnp.float32)
    seg = jnp.ones((1, 512), jnp.int32)
    ring, single = {}, {}
    program_flops(jax.make_jaxpr(lambda q, k, v: _ring(4, "zigzag", "pallas_gpu")(q, k, v, seg))(q, kv, kv).jaxpr,
                  kernels=ring)
    program_flops(jax.make_jaxpr(lambda q, k, v: flash_attention(q, k, v, impl="pallas_gpu"))(q, kv, kv).jaxpr,
                  kernels=single)
    assert ring == single == {"flash_fwd": 36 * 2 * 2 * (2 * 64 * 64 * 32)}
