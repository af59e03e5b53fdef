"""MoE kernels (kernels/moe) against the pure-jnp reference (kernels/reference/moe.py), on CPU.

Pallas kernels run in interpret mode at small shapes (few grid steps); the XLA path also runs at E=256. Cross-lowering
tests lower the kernels for TPU and an abstract H100 at production shapes without executing them
(docs/spec/kernels.md §6.4).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh, AxisType, Mesh

from kernels import backend, moe
from kernels.moe import grouped, routing
from kernels.reference import moe as ref

PALLAS = ("pallas_tpu", "pallas_gpu")
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def assert_close(got, want, tol, what=""):
    """|got - want| <= tol * max(1, max|want|) + tol * |want|: the tolerance is relative to the tensor's scale."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, float(np.max(np.abs(want)))), err_msg=what)


def make_case(E, N, k, load, dtype=jnp.float32, H=64, I=128, seed=0):
    """x [N, H], router [H, E], w_gate_up, w_down, a logit bias that shapes the load, and a random cotangent."""
    r = np.random.default_rng(seed)
    bias = np.zeros(E)
    if load == "empty":  # every other expert gets no token
        bias[1::2] = -30.0
    elif load == "one":  # every token's first choice is expert 3
        bias[3] = 30.0
    elif load == "dirichlet":  # skewed loads: a few experts take most rows
        bias = np.log(r.dirichlet(np.full(E, 0.3)) + 1e-6)
    arrays = dict(x=r.normal(size=(N, H)), router=r.normal(size=(H, E)) / math.sqrt(H),
                  w_gate_up=r.normal(size=(E, H, 2 * I)) / math.sqrt(H), w_down=r.normal(size=(E, I, H)) / math.sqrt(I))
    args = {n: jnp.asarray(a, dtype) for n, a in arrays.items()}
    return args, jnp.asarray(bias, dtype), jnp.asarray(r.normal(size=(N, H)), dtype)


def ffn_value_and_grads(ffn, args, bias, cot, k):
    """The block's output and the gradients of sum(out * cot) for x, the router matrix and both expert tensors."""
    def loss(x, router, w_gate_up, w_down):
        out = ffn(x, x @ router + bias, w_gate_up, w_down, k)
        return jnp.sum(out.astype(jnp.float32) * cot.astype(jnp.float32)), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(
        args["x"], args["router"], args["w_gate_up"], args["w_down"])
    return out, grads


def check_against_reference(impl, E, N, k, load, dtype):
    args, bias, cot = make_case(E, N, k, load, dtype)
    got = ffn_value_and_grads(lambda *a: moe.moe_ffn(*a, impl=impl), args, bias, cot, k)
    want = ffn_value_and_grads(ref.moe_ffn, args, bias, cot, k)
    for name, g, w in zip(("out", "dx", "d_router", "d_w_gate_up", "d_w_down"), jax.tree.leaves(got),
                          jax.tree.leaves(want)):
        assert g.dtype == w.dtype, name
        assert_close(g, w, TOL[dtype], name)


# ---- routing and permutation ------------------------------------------------------------------------------------

def test_route_is_the_models_router_fp32_softmax_topk_renormalised():
    from a1jax.model import moe as model_moe
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(40, 16)) * 3, jnp.bfloat16)
    w, ids = moe.route(logits, 4)
    w_ref, ids_ref = ref.route(logits, 4)
    w_model, ids_model, _ = model_moe.route(logits, 4)
    assert w.dtype == jnp.float32 and ids.dtype == jnp.int32
    np.testing.assert_array_equal(ids, ids_ref)
    np.testing.assert_array_equal(ids, ids_model)
    np.testing.assert_allclose(w, w_ref, rtol=1e-6)
    np.testing.assert_array_equal(w, w_model)
    np.testing.assert_allclose(jnp.sum(w, -1), 1.0, rtol=1e-6)


def _eqns(jaxpr):
    """All equations of a jaxpr, including those of nested jaxprs (pjit, custom_vjp, pallas_call, loops)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _eqns(sub)


def _skewed_ids(N=29, k=3, E=8, seed=0):
    r = np.random.default_rng(seed)
    p = np.array([0.5, 0.0, 0.2, 0.0, 0.1, 0.1, 0.1, 0.0])[:E]  # three empty experts
    return np.stack([r.choice(E, size=k, replace=False, p=p / p.sum()) for _ in range(N)]).astype(np.int32)


def test_permutation_pads_each_expert_to_whole_tiles():
    N, k, E, H, tile = 29, 3, 8, 5, 4
    ids = _skewed_ids(N, k, E)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(N, H)), jnp.float32)
    x_sorted, layout = moe.permute(x, jnp.asarray(ids), E, tile=tile)
    counts = np.bincount(ids.ravel(), minlength=E)
    np.testing.assert_array_equal(layout.group_sizes, counts)
    starts = np.asarray(layout.expert_tile_start)
    np.testing.assert_array_equal(np.diff(starts), -(-counts // tile))
    pos, src = np.asarray(layout.pos), np.asarray(layout.src)
    for t in range(N):
        for j in range(k):
            p = pos[t, j]
            e = ids[t, j]
            assert starts[e] * tile <= p < starts[e + 1] * tile  # inside its expert's tiles...
            assert src[p] == t * k + j
            np.testing.assert_array_equal(x_sorted[p], x[t])  # ...holding its token
    padding = src == N * k
    assert padding.sum() == x_sorted.shape[0] - N * k and not np.any(np.asarray(x_sorted)[padding])
    active = int(layout.num_active_tiles[0])
    te = np.asarray(layout.tile_expert)
    for e in range(E):  # every tile belongs to exactly one expert
        assert np.all(te[starts[e]:starts[e + 1]] == e)
    assert active == starts[-1] and np.all(te[active:] == te[active - 1])


def test_unpermute_combines_rows_with_routing_weights():
    N, k, E = 29, 3, 8
    ids = jnp.asarray(_skewed_ids(N, k, E))
    r = np.random.default_rng(2)
    x = jnp.asarray(r.normal(size=(N, 6)), jnp.float32)
    w = jnp.asarray(r.uniform(size=(N, k)), jnp.float32)
    x_sorted, layout = moe.permute(x, ids, E, tile=8)
    np.testing.assert_allclose(moe.unpermute(2 * x_sorted, w, layout), 2 * x * jnp.sum(w, 1, keepdims=True),
                               rtol=1e-6)


def test_permutation_backward_is_a_gather_not_a_scatter_add():
    N, k, E, H = 29, 3, 8, 6
    ids = jnp.asarray(_skewed_ids(N, k, E))
    r = np.random.default_rng(3)
    x = jnp.asarray(r.normal(size=(N, H)), jnp.float32)
    w = jnp.asarray(r.uniform(size=(N, k)), jnp.float32)
    scale = jnp.asarray(r.normal(size=(E, H)), jnp.float32)

    def through_buffer(x, w):  # a per-expert scaling in the sorted layout, so that rows must really move
        x_sorted, layout = moe.permute(x, ids, E, tile=4)
        row_expert = jnp.repeat(layout.tile_expert, layout.tile)
        return jnp.sum(moe.unpermute(x_sorted * scale[row_expert], w, layout) ** 2)

    def direct(x, w):
        return jnp.sum(jnp.einsum("nkh,nk->nh", x[:, None, :] * scale[ids], w) ** 2)

    grads = jax.grad(through_buffer, argnums=(0, 1))(x, w)
    for g, want in zip(grads, jax.grad(direct, argnums=(0, 1))(x, w)):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
    jaxpr = jax.make_jaxpr(jax.grad(through_buffer, argnums=(0, 1)))(x, w).jaxpr
    float_scatters = [e for e in _eqns(jaxpr) if e.primitive.name.startswith("scatter")
                      and jnp.issubdtype(e.outvars[0].aval.dtype, jnp.floating)]
    assert not float_scatters  # (the int32 bincount of group sizes is a scatter-add, and fine)


def test_expert_offset_lays_out_only_the_local_experts():
    N, k, E = 29, 3, 8
    ids = _skewed_ids(N, k, E)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(N, 4)), jnp.float32)
    x_sorted, layout = moe.permute(x, jnp.asarray(ids), 4, tile=4, expert_offset=jnp.int32(4))  # experts 4..7
    local = (ids >= 4)
    np.testing.assert_array_equal(layout.group_sizes, np.bincount(ids.ravel(), minlength=E)[4:])
    back = moe.gather_back(x_sorted, layout)
    np.testing.assert_array_equal(back, np.where(local[..., None], np.asarray(x)[:, None, :], 0.0))


# ---- grouped matmul ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", PALLAS + ("xla_cpu", "xla"))
def test_gmm_and_tgmm_match_ragged_dot_with_empty_groups_and_trailing_rows(impl):
    r = np.random.default_rng(5)
    M, K, N = 45, 64, 128
    sizes = jnp.asarray([9, 0, 17, 0, 3, 11], jnp.int32)  # sums to 40 < M: the last 5 rows belong to no group
    lhs = jnp.asarray(r.normal(size=(M, K)), jnp.float32)
    rhs = jnp.asarray(r.normal(size=(6, K, N)) / 8, jnp.float32)
    cot = jnp.asarray(r.normal(size=(M, N)), jnp.float32)

    def run(gmm):
        loss = lambda a, b: jnp.sum(gmm(a, b, sizes) * cot)
        return jax.jit(lambda a, b: (gmm(a, b, sizes), jax.grad(loss, argnums=(0, 1))(a, b)))(lhs, rhs)

    got, want = run(lambda *a: moe.gmm(*a, impl=impl)), run(ref.gmm)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_close(g, w, 1e-5)
    assert not np.any(np.asarray(got[0])[40:])
    dw = jax.jit(lambda a, b: moe.tgmm(a, b, sizes, impl=impl))(lhs, cot)
    assert_close(dw, ref.tgmm(lhs, cot, sizes), 1e-5)
    assert not np.any(np.asarray(dw)[[1, 3]])  # empty groups get a zero gradient, not stale memory


# ---- the routed-expert block against the per-token reference ----------------------------------------------------

# Each case: (E, tokens, top_k, load, dtype). Token counts are not multiples of any row tile.
CASES = [
    (8, 37, 2, "uniform", jnp.float32),
    (16, 24, 8, "dirichlet", jnp.float32),
    (8, 40, 1, "one", jnp.float32),
    (16, 29, 2, "empty", jnp.float32),
    (8, 33, 2, "dirichlet", jnp.bfloat16),
]


def _case_id(c):
    return f"E{c[0]}-N{c[1]}-k{c[2]}-{c[3]}-{jnp.dtype(c[4]).name}"


@pytest.mark.parametrize("impl", PALLAS + ("xla_cpu",))
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_moe_ffn_kernels_match_reference_forward_and_gradients(impl, case):
    check_against_reference(impl, *case)


@pytest.mark.parametrize("case", [(256, 64, 8, "uniform", jnp.float32), (256, 48, 2, "dirichlet", jnp.float32),
                                  (256, 41, 1, "one", jnp.float32), (256, 50, 2, "empty", jnp.bfloat16)],
                         ids=_case_id)
@pytest.mark.parametrize("impl", ["xla", "xla_cpu"])
def test_moe_ffn_xla_matches_reference_at_256_experts(impl, case):
    check_against_reference(impl, *case)


def test_interpreted_grids_stay_under_100_steps():
    for impl in PALLAS:
        for E, N, k, load, dtype in CASES:
            args, bias, cot = make_case(E, N, k, load, dtype)
            loss = lambda x, router, a, b: jnp.sum(moe.moe_ffn(x, x @ router + bias, a, b, k, impl=impl) * cot)
            jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3)))(*args.values()).jaxpr
            grids = [e.params["grid_mapping"].grid for e in _eqns(jaxpr) if e.primitive.name == "pallas_call"]
            assert len(grids) == 6  # fused gate|up, down, two transposed gmms, two tgmms: nothing fell back
            assert max(math.prod(g) for g in grids) <= 100, (impl, E, N, k, grids)


# ---- dispatch --------------------------------------------------------------------------------------------------

def test_backend_chain_precedence_is_argument_then_environment_then_platform(monkeypatch):
    monkeypatch.delenv("KERNELS_MOE_IMPL", raising=False)
    assert backend.candidates("moe", platform_name="cpu") == ("xla_cpu", "xla")
    assert backend.candidates("moe", platform_name="tpu") == ("pallas_tpu", "xla")
    assert backend.candidates("moe", platform_name="cuda") == ("pallas_gpu", "xla")
    assert backend.candidates("moe", "xla", platform_name="tpu") == ("xla",)
    monkeypatch.setenv("KERNELS_MOE_IMPL", "pallas_gpu")
    assert backend.candidates("moe", platform_name="cpu") == ("pallas_gpu", "xla")
    assert backend.candidates("moe", "auto", platform_name="tpu") == ("pallas_gpu", "xla")
    assert backend.candidates("moe", "pallas_tpu", platform_name="cpu") == ("pallas_tpu", "xla")
    monkeypatch.setenv("KERNELS_MOE_IMPL", "triton")
    with pytest.raises(ValueError, match="KERNELS_MOE_IMPL.*'triton'.*pallas_gpu"):
        backend.candidates("moe")
    with pytest.raises(ValueError, match="impl argument.*'cuda'"):
        backend.candidates("moe", "cuda")


@pytest.mark.parametrize("impl", PALLAS)
def test_kernel_that_cannot_take_a_shape_falls_back_to_xla(impl):
    E, N, k, I = 8, 21, 2, 72  # I = 72: no power-of-two block >= 16 (Triton), no 128-lane gate|up block (Mosaic)
    with pytest.raises(NotImplementedError, match=impl):
        grouped.validate(impl, 64, I, jnp.float32, 16)
    args, bias, cot = make_case(E, N, k, "uniform", I=I)
    ffn = lambda *a: moe.moe_ffn(*a, impl=impl)
    jaxpr = jax.make_jaxpr(ffn, static_argnums=4)(args["x"], args["x"] @ args["router"], args["w_gate_up"],
                                                  args["w_down"], k).jaxpr
    assert not any(e.primitive.name == "pallas_call" for e in _eqns(jaxpr))
    got = ffn_value_and_grads(ffn, args, bias, cot, k)
    want = ffn_value_and_grads(ref.moe_ffn, args, bias, cot, k)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_close(g, w, 1e-5)


@pytest.mark.parametrize("impl", ["pallas_tpu", "auto"])
def test_model_moe_block_runs_the_kernels_behind_moe_impl(impl):
    from a1jax.model import moe as model_moe
    from a1jax.model import presets
    cfg = presets.tiny(moe_intermediate_size=128)
    args, _, cot = make_case(cfg.num_experts, 2 * 19, cfg.num_experts_per_tok, "dirichlet", H=cfg.hidden_size, I=128)
    p = {"router": args["router"], "experts_gate_up": args["w_gate_up"], "experts_down": args["w_down"]}
    x, valid = args["x"].reshape(2, 19, -1), jnp.ones((2, 19), bool)

    def run(moe_impl):
        loss = lambda p, x: jnp.sum(model_moe.moe_block(p, x, cfg.replace(moe_impl=moe_impl), valid)[0]
                                    * cot.reshape(x.shape))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(p, x)

    for g, w in zip(jax.tree.leaves(run(impl)), jax.tree.leaves(run("ragged_dot"))):
        assert_close(g, w, 1e-5)


# ---- cross-lowering at production shapes (nothing executes) ------------------------------------------------------

DEVICES = {"tpu": AbstractDevice(device_kind="TPU v5p", num_cores=1, platform="tpu"),
           "cuda": AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")}
KERNEL_CALL = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}
E_PROD, H_PROD, I_PROD, K_PROD = 256, 2048, 512, 8  # Qwen3.5-35B-A3B: 256 experts, hidden 2048, width 512, top-8


def lower_for(platform, fn, *args, devices=1):
    """StableHLO text of jit(fn) lowered for `platform` on an abstract mesh of `devices` devices of that kind."""
    mesh = AbstractMesh((devices,), ("expert",), axis_types=(AxisType.Auto,), abstract_device=DEVICES[platform])
    with backend.target_platform(platform), jax.sharding.use_abstract_mesh(mesh):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


def _bf16(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.bfloat16)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_moe_block_forward_and_backward_lower_for_tpu_and_h100(platform):
    N = 512 * E_PROD // K_PROD  # 512 rows per expert on average

    def loss(x, logits, w_gate_up, w_down):
        return jnp.sum(moe.moe_ffn(x, logits, w_gate_up, w_down, K_PROD).astype(jnp.float32))

    text = lower_for(platform, jax.grad(loss, argnums=(0, 1, 2, 3)), _bf16(N, H_PROD), _bf16(N, E_PROD),
                     _bf16(E_PROD, H_PROD, 2 * I_PROD), _bf16(E_PROD, I_PROD, H_PROD))
    assert text.count(KERNEL_CALL[platform]) == 6  # swiglu gmm, down gmm, two transposed gmms, two tgmms


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("n", [512, 1024])
def test_gmm_and_its_gradient_lower_for_tpu_and_h100(platform, n):
    def f(lhs, rhs, group_sizes):
        return jnp.sum(moe.gmm(lhs, rhs, group_sizes).astype(jnp.float32))

    text = lower_for(platform, jax.value_and_grad(f, argnums=(0, 1)), _bf16(E_PROD * 512, H_PROD),
                     _bf16(E_PROD, H_PROD, n),
                     jax.ShapeDtypeStruct((E_PROD,), jnp.int32))
    assert text.count(KERNEL_CALL[platform]) == 3  # gmm, transposed gmm, tgmm


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_expert_parallel_ragged_all_to_all_lowers_for_tpu_and_h100(platform):
    D, n = 8, 2048  # 8 expert shards of 32 experts, 2048 tokens each

    def loss(x, weights, ids, w_gate_up, w_down):
        mesh = AbstractMesh((D,), ("expert",), axis_types=(AxisType.Auto,), abstract_device=DEVICES[platform])
        y, _ = moe.ep_routed_ffn(x, weights, ids, w_gate_up, w_down, mesh=mesh, transport="ragged")
        return jnp.sum(y.astype(jnp.float32))

    text = lower_for(platform, jax.grad(loss, argnums=(0, 1, 3, 4)), _bf16(D * n, H_PROD), _bf16(D * n, K_PROD),
                     jax.ShapeDtypeStruct((D * n, K_PROD), jnp.int32), _bf16(E_PROD, H_PROD, 2 * I_PROD),
                     _bf16(E_PROD, I_PROD, H_PROD), devices=D)
    assert text.count("ragged_all_to_all") >= 3 and text.count(KERNEL_CALL[platform]) == 6


# ---- expert parallelism on virtual CPU devices -------------------------------------------------------------------

EP_CASES = [  # (shards, transport, local implementation, load, top_k)
    (4, "all_to_all", "pallas_gpu", "dirichlet", 2),
    (4, "ragged", "pallas_tpu", "one", 1),  # every row to one shard: the worst case the buffers are sized for
    (8, "ragged", "xla", "empty", 8),
    (8, "all_to_all", "xla", "uniform", 2),
    (4, "all_to_all", "xla_cpu", "dirichlet", 2),  # the CPU default
]


@pytest.mark.parametrize("D,transport,impl,load,k", EP_CASES, ids=lambda v: str(v))
def test_expert_parallel_matches_single_device_forward_and_gradients(D, transport, impl, load, k):
    E, N = 16, 8 * D
    mesh = Mesh(np.array(jax.devices()[:D]), ("expert",))
    args, bias, cot = make_case(E, N, k, load)

    def ep_ffn(x, logits, w_gate_up, w_down, k):
        weights, ids = moe.route(logits, k)
        return moe.ep_routed_ffn(x, weights, ids, w_gate_up, w_down, mesh=mesh, transport=transport, impl=impl)[0]

    got = ffn_value_and_grads(ep_ffn, args, bias, cot, k)
    want = ffn_value_and_grads(ref.moe_ffn, args, bias, cot, k)
    for name, g, w in zip(("out", "dx", "d_router", "d_w_gate_up", "d_w_down"), jax.tree.leaves(got),
                          jax.tree.leaves(want)):
        assert_close(g, w, 1e-5, name)

    weights, ids = moe.route(args["x"] @ args["router"] + bias, k)
    _, m = jax.jit(lambda *a: moe.ep_routed_ffn(*a, mesh=mesh, transport=transport, impl=impl))(
        args["x"], weights, ids, args["w_gate_up"], args["w_down"])
    m = {name: float(v) for name, v in m.items()}
    assert m["routed_rows"] == N * k and m["receive_buffer_rows"] == N * k
    assert m["transported_rows"] == (D * N * k if transport == "all_to_all" else N * k)
    np.testing.assert_allclose(m["transport_padding_fraction"], 1 - 1 / D if transport == "all_to_all" else 0.0)
    assert m["kernel_rows"] >= N * k and (impl != "xla" or m["kernel_rows"] == N * k)
    np.testing.assert_allclose(m["tile_padding_fraction"], 1 - N * k / m["kernel_rows"], rtol=1e-6)
    per_shard = np.bincount(np.asarray(ids).ravel() // (E // D), minlength=D)
    assert m["max_received_rows"] == per_shard.max()
    if load == "one":
        assert m["max_received_rows"] == N * k  # one shard received every row, and nothing was dropped


def _kernel_costs(fn, *args):
    """{pallas_call name: sorted cost_estimate flops of its calls} of every kernel traced by fn."""
    out = {}

    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "pallas_call":
                out[e.params["name"]] = sorted(out.get(e.params["name"], []) + [e.params["cost_estimate"].flops])
            for v in e.params.values():
                inner = getattr(v, "jaxpr", None)
                if inner is not None:
                    walk(getattr(inner, "jaxpr", inner))

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return out


@pytest.mark.parametrize("impl", PALLAS)
def test_kernel_cost_follows_the_rows_received_not_the_worst_case_buffer(impl):
    """An expert-parallel shard's buffer holds D*R rows of which R arrive on average: the grouped matmuls' cost
    estimates count the tiles of R rows plus half a tile of padding per expert, not the buffer."""
    D, R, E, H, inter = 8, 512, 4, 64, 128
    x = jax.ShapeDtypeStruct((D * R, H), jnp.float32)
    ids = jax.ShapeDtypeStruct((D * R,), jnp.int32)
    wgu, wd = jax.ShapeDtypeStruct((E, H, 2 * inter), jnp.float32), jax.ShapeDtypeStruct((E, inter, H), jnp.float32)
    loss = lambda x, wgu, wd, ids: moe.local_expert_ffn(x, ids, wgu, wd, impl=impl, tile=32,
                                                        expected_rows=R)[0].sum()
    costs = _kernel_costs(jax.grad(loss, argnums=(0, 1, 2)), x, wgu, wd, ids)
    rows = R + E * 16  # 31 // 2 = 15 rows of padding per expert on average, rounded up to whole tiles
    up, down = 2 * rows * H * 2 * inter, 2 * rows * inter * H  # [rows, H] x [H, 2I] and [rows, I] x [I, H]
    assert costs == {"moe_gmm_swiglu": [up], "moe_gmm": [down], "moe_gmm_t": [down, up], "moe_tgmm": [down, up]}


def test_expected_tile_rows_count_half_a_tile_of_padding_per_expert_within_the_buffer():
    layout = moe.plan(jnp.zeros((64, 2), jnp.int32), 4, tile=16)  # 128 rows; capacity 128 + 4 * 15 -> 192
    assert layout.expected_rows == 128 and layout.src.shape[0] == 192
    assert routing.expected_tile_rows(layout) == 160  # 128 + 4 * 15 // 2 = 158, in whole tiles
    small = moe.plan(jnp.zeros((4, 1), jnp.int32), 64, tile=16)  # 4 rows over 64 experts: never beyond the buffer
    assert routing.expected_tile_rows(small) <= small.src.shape[0]
