"""Gated DeltaNet kernels: scan reference = chunked jnp = Pallas, and context parallel = one shard
(docs/spec/kernels.md §3.3).

CPU: Pallas in interpret mode, fp32. Cases carry packed segments (a boundary inside a chunk, a chunk-aligned one and
the padding id 0), a non-zero initial state, dk != dv and Hv = 2 Hk; T = 200 is not a chunk multiple. Gradients of
q, k, v, g, beta and the initial state use random cotangents on both o and the final state. Decays are slow so the
state carries across chunks and shards (with fast decay a wrong carry could hide below the tolerance).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from a1jax.model.deltanet import causal_conv
from a1jax.model.layers import l2_normalize
from cross_lowering import custom_calls, lower_text
from kernels.gdn import chunk_gated_delta_rule, context_parallel_gated_delta_rule, conv_halo
from kernels.gdn.intra import lower_inverse, unit_lower_inverse
from kernels.reference import gdn as ref

F32 = jnp.float32
AXIS = "sequence"
ATOL = 2e-5  # fp32; chunked vs scan measured at ~1e-7 (outputs) and ~1e-5 (dq, whose scale is ~30)


def _inputs(B, T, Hk, H, dk, dv, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 8)
    q = l2_normalize(jax.random.normal(ks[0], (B, T, Hk, dk))) * dk ** -0.5
    k = l2_normalize(jax.random.normal(ks[1], (B, T, Hk, dk)))
    v = jax.random.normal(ks[2], (B, T, H, dv))
    g = -0.1 * jax.nn.softplus(jax.random.normal(ks[3], (B, T, H)))
    beta = jax.nn.sigmoid(jax.random.normal(ks[4], (B, T, H)))
    s0 = 0.3 * jax.random.normal(ks[5], (B, H, dk, dv))
    do = jax.random.normal(ks[6], (B, T, H, dv))
    ds = jax.random.normal(ks[7], (B, H, dk, dv))
    return (q, k, v, g, beta, s0), (do, ds)


def _value_and_grads(f, args, cts):
    out, vjp = jax.vjp(f, *args)
    return (*out, *vjp(cts))


NAMES = ("o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "d_initial_state")


def _assert_close(got, want, atol=ATOL):
    for name, a, b in zip(NAMES, got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=1e-4, err_msg=name)


def test_blockwise_doubling_inverse_matches_triangular_solve():
    a = jnp.tril(jax.random.normal(jax.random.PRNGKey(0), (3, 64, 64)) * 0.3, -1)
    eye = jnp.eye(64)
    want = jax.scipy.linalg.solve_triangular(eye + a, jnp.broadcast_to(eye, a.shape), lower=True)
    np.testing.assert_allclose(unit_lower_inverse(a), want, atol=1e-5)


@pytest.mark.parametrize("C", [16, 64])
def test_lower_inverse_matches_the_solve_forward_and_backward(C):
    """The XLA paths' inverse (diagonal blocks only, analytic backward) against the triangular solve differentiated by
    autodiff, with a random cotangent: equal values, and equal cotangents on the strictly lower entries it reads (the
    others are zero)."""
    ka, kc = jax.random.split(jax.random.PRNGKey(1))
    a = jnp.tril(jax.random.normal(ka, (2, 3, C, C)) * 0.3, -1)
    ct = jax.random.normal(kc, a.shape)
    eye = jnp.eye(C)
    strict = jnp.tril(jnp.ones((C, C), bool), -1)

    def solve(a):
        a = jnp.where(strict, a, 0.0)
        return jax.scipy.linalg.solve_triangular(eye + a, jnp.broadcast_to(eye, a.shape), lower=True)

    got, vjp = jax.vjp(lower_inverse, a)
    want, vjp_want = jax.vjp(solve, a)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got, unit_lower_inverse(a), rtol=1e-6, atol=1e-6)  # the same ops; XLA:CPU may split
    # the two programs' dots differently under load (1e-7 apart in a loaded CI rehearsal)
    (da,), (da_want,) = vjp(ct), vjp_want(ct)
    np.testing.assert_allclose(da, da_want, atol=1e-4, rtol=1e-4)
    assert not np.any(np.asarray(da)[..., ~np.asarray(strict)])


# B = 2 rows: row 0 has boundaries inside chunks and a padding tail (id 0), row 1 a chunk-aligned boundary.
SEGMENTS = jnp.asarray(np.stack([np.concatenate([np.full(50, 1), np.full(70, 2), np.full(60, 3), np.full(20, 0)]),
                                 np.concatenate([np.full(64, 4), np.full(136, 5)])]), jnp.int32)


@pytest.mark.parametrize("impl", ["xla", "xla_cpu", "pallas_tpu", "pallas_gpu"])
def test_chunked_equals_scan_reference(impl):
    """Packed segments, initial state, dk=32 != dv=48, Hv = 2 Hk, T = 200 (padded to 4 chunks of 64)."""
    args, cts = _inputs(2, 200, 1, 2, 32, 48)

    def f(impl_fn):
        return lambda q, k, v, g, beta, s0: impl_fn(q, k, v, g, beta, segment_ids=SEGMENTS, initial_state=s0)

    got = jax.jit(lambda a, c: _value_and_grads(f(lambda *x, **kw: chunk_gated_delta_rule(*x, impl=impl, **kw)),
                                                a, c))(args, cts)
    want = _value_and_grads(f(ref.chunk_gated_delta_rule), args, cts)
    _assert_close(got, want)


def test_pallas_tpu_variant_under_the_tpu_interpreter(monkeypatch):
    """KERNELS_INTERPRET=tpu simulates TPU memory (uninitialised buffers are NaN): the state carried in scratch across
    the chunk grid axis and the reversed chunk walk behave as on the chip."""
    monkeypatch.setenv("KERNELS_INTERPRET", "tpu")
    args, cts = _inputs(1, 128, 1, 2, 32, 32, seed=4)
    seg = SEGMENTS[:1, :128]

    def f(impl_fn):
        return lambda q, k, v, g, beta, s0: impl_fn(q, k, v, g, beta, segment_ids=seg, initial_state=s0)
    got = _value_and_grads(f(lambda *x, **kw: chunk_gated_delta_rule(*x, impl="pallas_tpu", **kw)), args, cts)
    _assert_close(got, _value_and_grads(f(ref.chunk_gated_delta_rule), args, cts))


def test_cpu_default_is_the_doubling_inverse_and_other_chunk_sizes_take_the_triangular_solve(caplog):
    """On CPU "auto" runs "xla_cpu" (batched matmuls instead of LAPACK's triangular solve, kernels/gdn/chunk.py); a
    chunk size that is not a power of two has no doubling inverse and falls to "xla" with the same result."""
    from kernels import backend
    assert backend.candidates("gdn", platform_name="cpu") == ("xla_cpu", "xla")
    args, _ = _inputs(1, 90, 2, 2, 16, 16, seed=3)
    run = lambda impl: chunk_gated_delta_rule(*args[:5], initial_state=args[5], chunk_size=24, impl=impl)
    np.testing.assert_allclose(run("xla_cpu")[0], run("xla")[0], atol=0)
    assert "not a power of two" in caplog.text


def test_packed_segments_do_not_leak_deltanet_state():
    """A packed row gives each document exactly what it gets alone (the initial state only reaches the first)."""
    (q, k, v, g, beta, s0), _ = _inputs(1, 120, 2, 2, 32, 32, seed=1)
    cuts = [0, 40, 80, 120]  # boundaries inside the two chunks; equal lengths share one compilation
    seg = jnp.asarray(np.repeat([1, 2, 3], np.diff(cuts))[None], jnp.int32)
    run = jax.jit(lambda *a, seg, s0: chunk_gated_delta_rule(*a, segment_ids=seg, initial_state=s0,
                                                             impl="pallas_tpu"))
    o, _ = run(q, k, v, g, beta, seg=seg, s0=s0)
    for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        o_alone, _ = run(*(x[:, lo:hi] for x in (q, k, v, g, beta)), seg=None, s0=s0 if i == 0 else 0 * s0)
        np.testing.assert_allclose(o[:, lo:hi], o_alone, atol=1e-6, err_msg=f"document {i}")


# ---- context parallel ---------------------------------------------------------------------------------------------
def _mesh(n):
    return jax.make_mesh((n,), (AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def _context_parallel(n, impl, segment_ids):
    body = lambda q, k, v, g, b, seg, s0: context_parallel_gated_delta_rule(
        q, k, v, g, b, axis_name=AXIS, segment_ids=seg, initial_state=s0, impl=impl)
    sm = jax.shard_map(body, mesh=_mesh(n), in_specs=(P(None, AXIS),) * 6 + (P(),), out_specs=(P(None, AXIS), P()),
                       check_vma=False)  # interpreted kernels fail the vma check (docs/spec/kernels.md §2, gotcha 3)
    return lambda q, k, v, g, b, s0: sm(q, k, v, g, b, segment_ids, s0)


# 4 shards of 64: document 2 crosses two shard borders, document 3 starts exactly on a border (state must reset).
CP_SEGMENTS = jnp.asarray(np.concatenate([np.full(40, 1), np.full(152, 2), np.full(64, 3)])[None], jnp.int32)


@pytest.mark.parametrize("n,impl", [(1, "pallas_tpu"), (2, "pallas_tpu"), (4, "pallas_tpu"), (4, "xla")])
def test_context_parallel_equals_one_shard(n, impl):
    args, cts = _inputs(1, 256, 1, 2, 32, 48, seed=2)
    got = jax.jit(lambda a, c: _value_and_grads(_context_parallel(n, impl, CP_SEGMENTS), a, c))(args, cts)
    want = _value_and_grads(lambda q, k, v, g, b, s0: ref.chunk_gated_delta_rule(
        q, k, v, g, b, segment_ids=CP_SEGMENTS, initial_state=s0), args, cts)
    _assert_close(got, want)


def test_context_parallel_cases_depend_on_the_incoming_state():
    """Guards the test above: shard 2 alone (zero incoming state) differs from its part of the whole sequence."""
    (q, k, v, g, beta, s0), _ = _inputs(1, 256, 1, 2, 32, 48, seed=2)
    o, _ = ref.chunk_gated_delta_rule(q, k, v, g, beta, segment_ids=CP_SEGMENTS, initial_state=s0)
    part = lambda x: x[:, 128:192]
    o_alone, _ = ref.chunk_gated_delta_rule(*(part(x) for x in (q, k, v, g, beta)), segment_ids=part(CP_SEGMENTS))
    assert float(jnp.abs(part(o) - o_alone).max()) > 100 * ATOL


def test_conv_halo_gives_the_full_sequence_conv():
    T, n, K = 64, 4, 4
    x = jax.random.normal(jax.random.PRNGKey(3), (2, T, 3, 8))
    w = jax.random.normal(jax.random.PRNGKey(4), (K, 3, 8))
    seg = jnp.asarray(np.stack([np.repeat([1, 2], [30, 34]), np.repeat([5, 6, 7], [16, 2, 46])]), jnp.int32)
    want, _, _ = causal_conv(x, w, seg)

    def body(x, seg):
        hist, hist_seg = conv_halo(x, seg, axis_name=AXIS, width=K - 1)
        return causal_conv(x, w, seg, hist, hist_seg)[0]
    got = jax.jit(jax.shard_map(body, mesh=_mesh(n), in_specs=(P(None, AXIS),) * 2, out_specs=P(None, AXIS)))(x, seg)
    np.testing.assert_allclose(got, want, atol=1e-6)


# ---- cross-lowering -----------------------------------------------------------------------------------------------
def _production(T):
    """Qwen3.5-35B DeltaNet: 16 qk-heads, 32 v-heads, dk = dv = 128, chunk 64."""
    S = lambda *s: jax.ShapeDtypeStruct(s, F32)
    args = (S(1, T, 16, 128), S(1, T, 16, 128), S(1, T, 32, 128), S(1, T, 32), S(1, T, 32), S(1, 32, 128, 128))
    return args, (S(1, T, 32, 128), S(1, 32, 128, 128)), jax.ShapeDtypeStruct((1, T), jnp.int32)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_chunked_lowers_at_production_shapes(platform):
    args, cts, seg = _production(4096)

    def f(args, cts, seg):
        return _value_and_grads(lambda q, k, v, g, b, s0: chunk_gated_delta_rule(
            q, k, v, g, b, segment_ids=seg, initial_state=s0), args, cts)
    assert custom_calls(lower_text(f, (args, cts, seg), platform), platform) == 5  # wy, fwd_h, output; fwd_h, bwd_dhu


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_context_parallel_lowers_at_production_shapes(platform):
    n = 4
    args, cts, seg = _production(4 * 4096)

    def f(args, cts, seg):
        body = lambda q, k, v, g, b, s, s0: context_parallel_gated_delta_rule(
            q, k, v, g, b, axis_name=AXIS, segment_ids=s, initial_state=s0)
        sm = jax.shard_map(body, in_specs=(P(None, AXIS),) * 6 + (P(),), out_specs=(P(None, AXIS), P()),
                           check_vma=False)
        return _value_and_grads(lambda *a: sm(*a[:5], seg, a[5]), args, cts)
    text = lower_text(f, (args, cts, seg), platform, n)
    assert custom_calls(text, platform) == 9 and "all_gather" in text.replace("-", "_")  # 4 pre-pass + 5 main


@pytest.mark.slow
def test_model_with_kernel_impls_matches_the_reference_impls():
    """The switches in ModelConfig route the tiny model's attention and DeltaNet layers through the Pallas kernels;
    logits and parameter gradients match the model's own reference and chunked implementations. Gradients are
    compared at 2e-3 of each leaf's scale: A_log's gradient is a long cancelling sum whose fp32 noise is of that
    order even between the model's own scan and chunked forms."""
    from a1jax import model

    cfg = model.presets.tiny(num_experts=0, num_experts_per_tok=0, shared_expert_intermediate_size=0,
                             intermediate_size=32)
    params = model.init(cfg, jax.random.PRNGKey(0), include_mtp=False)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 48), 0, cfg.vocab_size)
    seg = jnp.asarray(np.stack([np.repeat([1, 2, 0], [20, 20, 8]), np.repeat([3, 4], [17, 31])]), jnp.int32)
    cot = jax.random.normal(jax.random.PRNGKey(2), (2, 48, cfg.vocab_size))

    def run(c):
        f = lambda p: jnp.sum(model.forward(p, tokens, c, segment_ids=seg).logits * cot)
        return jax.jit(jax.value_and_grad(f))(params)

    want = run(cfg)
    got = run(cfg.replace(attention_impl="pallas_tpu", deltanet_impl="pallas_tpu"))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(a, b, atol=2e-3 * float(jnp.abs(b).max()) + 1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("impl", ["pallas_tpu", "pallas_gpu"])
def test_cost_estimates_match_the_kernel_bodies_and_the_analytic_flops(impl):
    """Each GDN kernel's pl.CostEstimate equals its body's matmul FLOPs times the grid (the planner's count without an
    estimate), and the closed form: per (batch, v-head, chunk of C) wy 2C²(2dk + dv) + 4·log2(C)·C³, fwd_h 4C·dk·dv,
    output 2C(C·dk + dk·dv + C·dv), bwd_dhu 6C·dk·dv. Two chunks, two value blocks, Hv = 2 Hk."""
    from a1jax.plan import program_flops
    B, T, Hk, H, dk, dv, C = 1, 128, 1, 2, 32, 64, 64
    q, k = (jax.ShapeDtypeStruct((B, T, Hk, dk), F32),) * 2
    v = jax.ShapeDtypeStruct((B, T, H, dv), F32)
    g = beta = jax.ShapeDtypeStruct((B, T, H), F32)

    def loss(q, k, v, g, beta):
        o, s = chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=C, impl=impl, block_v=32)
        return o.sum() + s.sum()

    estimates, bodies = {}, {}

    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "pallas_call":
                name = e.params["name"]
                steps = np.prod([int(x) for x in e.params["grid_mapping"].grid])
                estimates.setdefault(name, []).append(e.params["cost_estimate"].flops)
                bodies.setdefault(name, []).append(int(steps * program_flops(e.params["jaxpr"])))
            for val in e.params.values():
                inner = getattr(val, "jaxpr", None)
                if inner is not None:
                    walk(getattr(inner, "jaxpr", inner))

    walk(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))(q, k, v, g, beta).jaxpr)
    per_chunk = B * H * (T // C)
    analytic = {"gdn_wy": [2 * C * C * (2 * dk + dv) + 4 * 6 * C ** 3],
                "gdn_fwd_h": [4 * C * dk * dv] * 2,  # the forward and the backward's recompute of the states
                "gdn_output": [2 * C * (C * dk + dk * dv + C * dv)], "gdn_bwd_dhu": [6 * C * dk * dv]}
    assert estimates == bodies == {n: [per_chunk * f for f in fs] for n, fs in analytic.items()}
