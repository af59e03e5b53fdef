"""Model properties that need no oracle: equivalences between paths, packing, caching, configs, counts."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax import model
from a1jax.model import gated_delta_rule as gdr
from a1jax.model import losses, moe
from a1jax.model.layers import l2_normalize


def _perturbed_params(cfg, seed=0):
    """Random init with norms, gated norms, dt_bias and A_log moved off their defaults (defaults hide bugs)."""
    params = model.init(cfg, jax.random.key(seed))
    leaves, treedef = jax.tree.flatten_with_path(params, is_leaf=model.params.is_param)
    rng = np.random.default_rng(seed)
    out = []
    for path, p in leaves:
        name = jax.tree_util.keystr(path)
        if any(s in name for s in ("norm", "dt_bias", "A_log")):
            p = model.Param(p.value + 0.3 * jnp.asarray(rng.normal(size=p.value.shape), p.value.dtype), p.axes)
        out.append(p)
    return jax.tree.unflatten(treedef, out)


def _gdr_inputs(B=2, T=150, H=3, dk=16, dv=24, seed=0):
    r = np.random.default_rng(seed)
    q = l2_normalize(jnp.asarray(r.normal(size=(B, T, H, dk)), jnp.float32)) * dk ** -0.5
    k = l2_normalize(jnp.asarray(r.normal(size=(B, T, H, dk)), jnp.float32))
    v = jnp.asarray(r.normal(size=(B, T, H, dv)), jnp.float32)
    g = -jnp.exp(jnp.asarray(r.normal(size=(B, T, H)) - 1.0, jnp.float32))
    beta = jax.nn.sigmoid(jnp.asarray(r.normal(size=(B, T, H)), jnp.float32))
    seg = np.ones((B, T), np.int32)
    seg[0, 40:], seg[0, 64:], seg[0, 100:] = 2, 3, 4  # boundaries inside and exactly at chunk starts
    seg[1, :10] = 0
    s0 = jnp.asarray(r.normal(size=(B, H, dk, dv)), jnp.float32)
    return (q, k, v, g, beta), jnp.asarray(seg), s0


@pytest.mark.parametrize("use_segments", [False, True])
@pytest.mark.parametrize("use_state", [False, True])
def test_chunked_gated_delta_rule_matches_scan_forward_and_grads(use_segments, use_state):
    args, seg, s0 = _gdr_inputs()
    kw = dict(segment_ids=seg if use_segments else None, initial_state=s0 if use_state else None)
    o_ref, s_ref = gdr.gated_delta_rule_scan(*args, **kw)
    o, s = gdr.gated_delta_rule_chunked(*args, chunk_size=32, **kw)
    np.testing.assert_allclose(o, o_ref, atol=2e-6)
    np.testing.assert_allclose(s, s_ref, atol=2e-6)

    r = np.random.default_rng(1)
    co, cs = jnp.asarray(r.normal(size=o.shape), jnp.float32), jnp.asarray(r.normal(size=s.shape), jnp.float32)

    def loss(fn, *a):
        o, s = fn(*a)
        return jnp.sum(o * co) + jnp.sum(s * cs)

    ref = jax.grad(lambda *a: loss(lambda *b: gdr.gated_delta_rule_scan(*b, **kw), *a), argnums=range(5))(*args)
    got = jax.grad(lambda *a: loss(lambda *b: gdr.gated_delta_rule_chunked(*b, chunk_size=32, **kw), *a),
                   argnums=range(5))(*args)
    for name, a, b in zip("qkvgb", got, ref):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=f"grad wrt {name}")


def test_packed_segments_do_not_leak_deltanet_state():
    args, seg, _ = _gdr_inputs()
    o, _ = gdr.gated_delta_rule_chunked(*args, segment_ids=seg, chunk_size=32)
    for lo, hi in ((0, 40), (40, 64), (64, 100), (100, 150)):
        alone, _ = gdr.gated_delta_rule_scan(*(a[:1, lo:hi] for a in args))
        np.testing.assert_allclose(o[:1, lo:hi], alone, atol=2e-6)


def _packed_batch(cfg, lengths=(37, 70, 21), T=140, seed=3):
    """One packed row of several segments (+ trailing padding) and the segments as separate rows."""
    r = np.random.default_rng(seed)
    segs = [r.integers(0, cfg.vocab_size, size=n) for n in lengths]
    tokens, seg_ids, pos = np.zeros((1, T), np.int32), np.zeros((1, T), np.int32), np.zeros((1, T), np.int32)
    off = 0
    for i, s in enumerate(segs):
        tokens[0, off:off + len(s)], seg_ids[0, off:off + len(s)] = s, i + 1
        pos[0, off:off + len(s)] = np.arange(len(s))
        off += len(s)
    return jnp.asarray(tokens), jnp.asarray(seg_ids), jnp.asarray(pos), segs


@pytest.mark.parametrize("preset", ["tiny", "tiny_dense"])
def test_packed_row_equals_segments_run_alone(preset):
    cfg = model.presets.get(preset)
    params = _perturbed_params(cfg)
    tokens, seg_ids, pos, segs = _packed_batch(cfg)
    fwd = jax.jit(lambda p, t, s, q: model.forward(p, t, cfg, positions=q, segment_ids=s).logits)
    packed = fwd(params, tokens, seg_ids, pos)
    off = 0
    for s in segs:
        alone = fwd(params, jnp.asarray(s)[None], jnp.ones((1, len(s)), jnp.int32), jnp.arange(len(s))[None])
        np.testing.assert_allclose(packed[:, off:off + len(s)], alone, atol=1e-5)
        off += len(s)


def test_packed_row_gradients_equal_sum_of_segment_gradients():
    cfg = model.presets.tiny()
    params = _perturbed_params(cfg)
    tokens, seg_ids, pos, segs = _packed_batch(cfg, lengths=(30, 45), T=80)
    cot = jnp.asarray(np.random.default_rng(0).normal(size=(1, 80, cfg.vocab_size)), jnp.float32)

    def f(p, t, s, q, c):  # a random linear functional of the logits: checks gradients of every logit
        return jnp.sum(model.forward(p, t, cfg, positions=q, segment_ids=s).logits * c)

    g_packed = jax.jit(jax.grad(f))(params, tokens, seg_ids, pos, cot * (seg_ids != 0)[..., None])
    g_sum, off = None, 0
    for s in segs:
        n = len(s)
        g = jax.jit(jax.grad(f))(params, jnp.asarray(s)[None], jnp.ones((1, n), jnp.int32), jnp.arange(n)[None],
                                 cot[:, off:off + n])
        g_sum = g if g_sum is None else jax.tree.map(jnp.add, g_sum, g)
        off += n
    # fp32 sums over differently chunked sequences (exact to 5e-15 in float64), so the noise floor follows the
    # overall gradient scale, not each leaf's own
    ref_leaves = jax.tree.leaves(model.unbox(g_sum))
    scale = max(float(jnp.max(jnp.abs(b))) for b in ref_leaves)
    for (path, a), b in zip(jax.tree.leaves_with_path(model.unbox(g_packed)), ref_leaves):
        err = float(jnp.max(jnp.abs(a - b)))
        assert err <= 1e-6 * scale + 1e-4 * float(jnp.max(jnp.abs(b))), (jax.tree_util.keystr(path), err, scale)


def test_cached_decoding_matches_full_forward_with_left_padding():
    cfg = model.presets.tiny()
    params = _perturbed_params(cfg)
    T, P = 90, 70
    tokens = jax.random.randint(jax.random.key(1), (2, T), 0, cfg.vocab_size)
    seg = jnp.ones((2, T), jnp.int32).at[1, :13].set(0)  # row 1 is left-padded
    full = model.forward(params, tokens, cfg, segment_ids=seg).logits
    cache = model.init_cache(cfg, 2, 128)
    out, cache = jax.jit(lambda p, t, s, c: model.prefill(p, t, cfg, c, segment_ids=s))(
        params, tokens[:, :P], seg[:, :P], cache)
    got = [out.logits]
    step = jax.jit(lambda p, t, c: model.decode_step(p, t, cfg, c))
    for i in range(P, T):
        out, cache = step(params, tokens[:, i:i + 1], cache)
        got.append(out.logits)
    got = jnp.concatenate(got, axis=1)
    valid = np.asarray(seg, bool)
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(full)[valid], atol=1e-5)
    assert int(cache["index"]) == T


def test_left_padded_row_equals_unpadded_row():
    cfg = model.presets.tiny()
    params = _perturbed_params(cfg)
    tokens = jax.random.randint(jax.random.key(2), (1, 80), 0, cfg.vocab_size)
    padded = jnp.concatenate([jnp.zeros((1, 11), jnp.int32), tokens], axis=1)
    seg = jnp.concatenate([jnp.zeros((1, 11), jnp.int32), jnp.ones((1, 80), jnp.int32)], axis=1)
    a = model.forward(params, padded, cfg, segment_ids=seg).logits[:, 11:]
    b = model.forward(params, tokens, cfg).logits
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("override", [dict(scan_layers=False), dict(remat_policy="full"),
                                      dict(remat_policy="dots", scan_layers=False), dict(deltanet_impl="scan")])
def test_layer_loop_remat_and_deltanet_impl_do_not_change_results(override):
    cfg = model.presets.tiny(num_hidden_layers=8)
    params = _perturbed_params(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, 70), 0, cfg.vocab_size)

    def loss(p, c):
        out = model.forward(p, tokens, c)
        return jnp.mean(out.logits ** 2) + out.aux["aux_loss"]

    l0, g0 = jax.jit(jax.value_and_grad(lambda p: loss(p, cfg)))(params)
    other = cfg.replace(**override)
    l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(p, other)))(params)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("keep", [True, False], ids=["logits_kept", "logits_recomputed"])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_token_logprobs_match_full_log_softmax_and_gradients(masked, keep, monkeypatch):
    """Both ways the backward gets the chunks' logits: kept (small batches, `losses.keeps_logits`) or recomputed
    under jax.checkpoint (above KEEP_LOGITS_BYTES)."""
    if not keep:
        monkeypatch.setattr(losses, "KEEP_LOGITS_BYTES", 0)
    r = np.random.default_rng(0)
    h = jnp.asarray(r.normal(size=(2, 50, 16)), jnp.float32)
    w = jnp.asarray(r.normal(size=(16, 97)), jnp.float32)
    t = jnp.asarray(r.integers(0, 97, size=(2, 50)), jnp.int32)
    c = jnp.asarray(r.normal(size=(2, 50)), jnp.float32)
    m = np.zeros((2, 50), np.float32)
    m[0, 3:9], m[1, 30:47], m[1, 0] = 1, 1, 1  # a few spans: most 16-position chunks hold none
    m = jnp.asarray(m) if masked else jnp.ones((2, 50), jnp.float32)

    def full(h, w):
        lp = jax.nn.log_softmax(h @ w, axis=-1)
        return jnp.take_along_axis(lp, t[..., None], -1)[..., 0] * m

    # 100 positions are not a multiple of 16
    chunked = lambda h, w: losses.token_logprobs(h, w, t, chunk_size=16, mask=m if masked else None)[0] * m
    assert losses.keeps_logits(2, 50, 16, 97) == keep
    assert ("remat" in str(jax.make_jaxpr(jax.grad(lambda h: jnp.sum(chunked(h, w))))(h))) != keep
    np.testing.assert_allclose(chunked(h, w), full(h, w), atol=1e-5)
    g1 = jax.grad(lambda h, w: jnp.sum(chunked(h, w) * c), argnums=(0, 1))(h, w)
    g0 = jax.grad(lambda h, w: jnp.sum(full(h, w) * c), argnums=(0, 1))(h, w)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_save_attention_remat_keeps_the_gradients_and_runs_the_attention_kernel_forward_once():
    """remat_policy="save_attention" saves the flash kernel's output and lse: the backward recomputes the layer but
    not the attention forward (counted from the traced program's kernel estimates), and the gradients equal full
    remat's."""
    from a1jax.plan import program_flops
    base = model.presets.tiny(num_hidden_layers=4, attention_impl="pallas_gpu", remat_policy="full")
    params = _perturbed_params(base)
    tokens = jax.random.randint(jax.random.key(1), (1, 64), 0, base.vocab_size)

    def grads(cfg):
        f = jax.value_and_grad(lambda p: jnp.mean(model.forward(p, tokens, cfg).logits ** 2))
        kernels = {}
        program_flops(jax.make_jaxpr(f)(params).jaxpr, kernels=kernels)
        return jax.jit(f)(params), kernels

    (l0, g0), k0 = grads(base)
    (l1, g1), k1 = grads(base.replace(remat_policy="save_attention"))
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)
    assert k1["flash_fwd"] == k0["flash_fwd"] / 2 and k1["flash_bwd"] == k0["flash_bwd"], (k0, k1)


def _all_shapes(jaxpr):
    """Shapes of every value computed in a jaxpr, recursing into scans, maps, checkpoints and custom rules."""
    for eqn in jaxpr.eqns:
        yield from (tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _all_shapes(sub)


def test_training_loss_never_materialises_full_vocab_logits():
    cfg = model.presets.tiny(loss_chunk_size=16)
    params = model.init(cfg, jax.random.key(0))
    h = jnp.zeros((2, 64, cfg.hidden_size))
    t = jnp.zeros((2, 64), jnp.int32)
    loss = lambda p, h: jnp.sum(model.token_logprobs(h, model.lm_head_weight(p, cfg), t, cfg.loss_chunk_size)[0])
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(params, h)
    shapes = set(_all_shapes(jaxpr.jaxpr))
    assert (2, 16, cfg.vocab_size) in shapes  # the per-chunk logits exist...
    assert not shapes & {(2, 64, cfg.vocab_size), (128, cfg.vocab_size)}  # ...but never logits of all 128 tokens


def test_chunked_loss_keeps_the_batch_sharding():
    """Each device projects only its own rows: the compiled per-device logits are [1, chunk, V] on 8 data shards."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    cfg = model.presets.tiny(loss_chunk_size=16)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = NamedSharding(mesh, P("data"))
    w = jnp.zeros((cfg.hidden_size, cfg.vocab_size))
    m = (jnp.arange(64)[None] % 3 == 0) & jnp.ones((8, 1), bool)
    f = jax.jit(lambda h, t, m: jnp.sum(model.token_logprobs(h, w, t, cfg.loss_chunk_size, mask=m)[0]),
                in_shardings=(rows, rows, rows))
    hlo = f.lower(jnp.zeros((8, 64, cfg.hidden_size)), jnp.zeros((8, 64), jnp.int32), m).compile().as_text()
    assert f"f32[1,16,{cfg.vocab_size}]" in hlo and f"f32[8,16,{cfg.vocab_size}]" not in hlo


@pytest.mark.parametrize("masked", [False, True])
def test_chunked_loss_on_a_sequence_sharded_mesh_projects_each_shards_own_positions(masked):
    """sequence=4 x data=2: per device the loss's LM-head dots are 1/8 of the whole batch's (before, every device ran
    the chunk loop over its rows' whole sequence: 1/2), and log-probs and gradients equal the unsharded ones."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    from a1jax.plan import hlo_dot_flops
    r = np.random.default_rng(1)
    B, T, H, V, c = 2, 64, 16, 96, 8
    h = jnp.asarray(r.normal(size=(B, T, H)), jnp.float32)
    w = jnp.asarray(r.normal(size=(H, V)), jnp.float32)
    t = jnp.asarray(r.integers(0, V, size=(B, T)), jnp.int32)
    m = jnp.asarray(r.random((B, T)) < 0.6, jnp.float32) if masked else None
    mesh = jax.make_mesh((2, 4), ("data", "sequence"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    tok = NamedSharding(mesh, P("data", "sequence"))

    def loss(h, w, shards):
        logp, lse = losses.token_logprobs(h, w, t, c, mask=m, sequence_shards=shards)
        keep = 1.0 if m is None else m  # masked-out positions' values depend on the chunking: not compared
        return jnp.sum(logp * keep) + 1e-2 * jnp.sum(lse * keep)

    grad = lambda shards: jax.jit(jax.value_and_grad(lambda h, w: loss(h, w, shards), argnums=(0, 1)),
                                  in_shardings=(tok, NamedSharding(mesh, P())))
    hlo = grad(4).lower(h, w).compile().as_text()
    per_device, _ = hlo_dot_flops(hlo)
    whole = 3 * 2 * B * T * H * V  # logits forward, recomputed in the backward, and dh (dw: a further B*T*H*V*2)
    assert per_device <= (whole + 2 * B * T * H * V) / 8 * 1.01, per_device
    want, got = jax.value_and_grad(lambda h, w: loss(h, w, 1), argnums=(0, 1))(h, w), grad(4)(h, w)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_aux_loss_matches_direct_formula_and_excludes_padding():
    r = np.random.default_rng(0)
    L, N, E, k = 3, 40, 8, 2
    logits = r.normal(size=(L, N, E)).astype(np.float32)
    valid = np.ones(N, bool)
    valid[:7] = False
    counts, probs, ntok = [], [], []
    for l in range(L):
        w, ids, p = moe.route(jnp.asarray(logits[l]), k)
        counts.append(np.bincount(np.asarray(ids)[valid].ravel(), minlength=E))
        probs.append(np.asarray(p)[valid].sum(0))
        ntok.append(valid.sum())
    got = moe.load_balancing_loss(jnp.asarray(np.stack(counts), jnp.float32), jnp.asarray(np.stack(probs)),
                                  jnp.asarray(ntok, jnp.float32), E)
    # direct: f_e = fraction of (token, slot) routed to e over all layers; P_e = mean prob
    p_all = np.concatenate([np.exp(x) / np.exp(x).sum(-1, keepdims=True) for x in logits[:, valid]], 0)
    top = np.argsort(-p_all, axis=-1)[:, :k]
    f = np.bincount(top.ravel(), minlength=E) / len(p_all)
    np.testing.assert_allclose(got, E * np.sum(f * p_all.mean(0)), rtol=1e-5)
    # perfect balance gives k
    uniform = moe.load_balancing_loss(jnp.full((1, E), N * k / E), jnp.full((1, E), N / E), jnp.full((1,), N), E)
    np.testing.assert_allclose(uniform, k, rtol=1e-6)


def test_dropless_moe_matches_per_token_loop():
    r = np.random.default_rng(0)
    N, H, E, I, k = 33, 16, 8, 12, 3
    x = jnp.asarray(r.normal(size=(N, H)), jnp.float32)
    logits = jnp.asarray(r.normal(size=(N, E)), jnp.float32).at[:, 0].add(5.0)  # skewed: expert 0 overloaded
    wgu = jnp.asarray(r.normal(size=(E, H, 2 * I)), jnp.float32) * 0.3
    wd = jnp.asarray(r.normal(size=(E, I, H)), jnp.float32) * 0.3
    w, ids, _ = moe.route(logits, k)
    got = moe.routed_experts(x, w, ids, wgu, wd)
    ref = np.zeros((N, H), np.float32)
    for n in range(N):
        for s in range(k):
            e = int(ids[n, s])
            hgu = np.asarray(x[n]) @ np.asarray(wgu[e])
            act = hgu[:I] / (1 + np.exp(-hgu[:I])) * hgu[I:]
            ref[n] += float(w[n, s]) * (act @ np.asarray(wd[e]))
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_mtp_forward_and_loss():
    cfg = model.presets.tiny(mtp_num_hidden_layers=1)
    params = _perturbed_params(cfg)
    tokens, seg_ids, pos, _ = _packed_batch(cfg, lengths=(20, 30), T=60)
    out = model.forward(params, tokens, cfg, positions=pos, segment_ids=seg_ids, mtp=True)
    assert out.mtp_hidden.shape == (1, 60, cfg.hidden_size)
    targets = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
    mask = (seg_ids != 0) & (jnp.roll(seg_ids, -1, axis=1) == seg_ids)
    nll, n = model.mtp_nll(params, out, targets, mask, seg_ids, cfg)
    # position t predicts t+2 within its segment: each segment of length n contributes n - 2 targets
    assert int(n) == (20 - 2) + (30 - 2)
    assert np.isfinite(float(nll)) and float(nll) > 0
    with pytest.raises(ValueError, match="mtp_num_hidden_layers"):
        model.forward(model.init(model.presets.tiny(), jax.random.key(0)), tokens, model.presets.tiny(), mtp=True)


def test_bf16_forward_is_close_to_fp32():
    cfg = model.presets.tiny()
    params = _perturbed_params(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, 80), 0, cfg.vocab_size)
    ref = model.forward(params, tokens, cfg).logits
    got = model.forward(params, tokens, cfg.replace(dtype="bfloat16")).logits
    assert float(jnp.max(jnp.abs(got - ref))) < 5e-2 * float(jnp.max(jnp.abs(ref))) + 5e-2


def test_parameter_counts_match_the_spec():
    assert model.count_params(model.presets.qwen35_35b_a3b()) == (34_660_610_688, 3_454_988_928)
    assert model.count_params(model.presets.qwen35_122b_a10b()) == (122_111_526_912, 9_771_288_576)
    assert model.count_params(model.presets.qwen35_397b_a17b()) == (396_346_350_336, 17_349_040_896)


def test_params_carry_logical_axes_matching_their_rank():
    cfg = model.presets.tiny(mtp_num_hidden_layers=1)
    abstract = model.abstract_params(cfg)
    for path, p in jax.tree.leaves_with_path(abstract, is_leaf=model.params.is_param):
        assert len(p.axes) == p.value.ndim, jax.tree_util.keystr(path)
    stacked = abstract["blocks"][0]["linear_attn"]["in_proj_q"]
    assert stacked.axes[0] == "layers" and stacked.value.shape[0] == cfg.num_blocks
    assert abstract["blocks"][0]["linear_attn"]["A_log"].value.dtype == jnp.float32


@pytest.mark.parametrize("override, message", [
    (dict(linear_num_value_heads=5), "linear_num_value_heads=5 must be a multiple of linear_num_key_heads=2"),
    (dict(num_attention_heads=5), "num_attention_heads=5 must be a multiple of num_key_value_heads=2"),
    (dict(head_dim=12), "rotary dimension"),
    (dict(num_experts_per_tok=9), "num_experts_per_tok=9"),
    (dict(layer_types=("linear_attention",) * 3), "layer_types has 3 entries"),
    (dict(remat_policy="sometimes"), "remat_policy"),
    (dict(deltanet_impl="magic"), "deltanet_impl"),
])
def test_invalid_config_names_the_field(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        model.presets.tiny(**override)


def test_block_pattern_and_presets():
    cfg = model.presets.qwen35_35b_a3b()
    assert cfg.block_pattern == ("linear_attention",) * 3 + ("full_attention",) and cfg.num_blocks == 10
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == list(range(3, 40, 4))
    assert model.presets.qwen35_0_8b().num_blocks == 6
    assert dataclasses.asdict(model.ModelConfig.from_dict(cfg.to_dict())) == dataclasses.asdict(cfg)


def test_summary_command_prints_counts_and_layout(capsys):
    from a1jax.cli import main
    assert main(["summary", "--preset", "qwen35_35b_a3b"]) == 0
    out = capsys.readouterr().out
    assert "total (text, no MTP): 34,660,610,688" in out and "active per token (incl. embedding): 3,454,988,928" in out
    assert out.count("DeltaNet") == 30 and out.count("attention  mixer") == 10
