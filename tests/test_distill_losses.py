"""Stage-2/3 losses (a1jax/distill/losses.py) against brute force and analytic gradients: docs/spec/recipe.md §6.5 items
1-8."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax.distill import losses


def x64():
    """float64 for the gradient oracles (jax.enable_x64 in new jax, jax.experimental.enable_x64 in older)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # pragma: no cover
    return enable_x64()


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _teacher_from_logits(teacher_logits, k, targets=None):
    """A TeacherSparse from dense teacher logits: exact top-k, tail and sampled log-probs."""
    logp = jax.nn.log_softmax(jnp.asarray(teacher_logits), -1)
    topk_logp, topk_ids = jax.lax.top_k(logp, k)
    t = {"topk_ids": topk_ids.astype(jnp.int32), "topk_logp": topk_logp,
         "tail_logp": losses.log1mexp(jax.nn.logsumexp(topk_logp, -1)), "valid": jnp.ones(logp.shape[:-1]),
         "logp": logp}
    t["sampled_logp"] = (jnp.zeros(logp.shape[:-1]) if targets is None else
                         jnp.take_along_axis(logp, targets[..., None], -1)[..., 0])
    return t


# --- 1, 2: full-vocabulary divergences -------------------------------------------------------------------------

def test_full_kl_matches_brute_force_and_analytic_gradients():
    r = np.random.default_rng(0)
    with x64():
        s, t = r.normal(size=(3, 5, 11)) * 2, r.normal(size=(3, 5, 11)) * 2
        q, p = _softmax(s), _softmax(t)
        rev = (q * (np.log(q) - np.log(p))).sum(-1)
        fwd = (p * (np.log(p) - np.log(q))).sum(-1)
        np.testing.assert_allclose(losses.full_reverse_kl(jnp.asarray(s), jnp.asarray(t)), rev, atol=1e-12)
        np.testing.assert_allclose(losses.full_forward_kl(jnp.asarray(s), jnp.asarray(t)), fwd, atol=1e-12)
        g_rev = jax.grad(lambda z: losses.full_reverse_kl(z, jnp.asarray(t)).sum())(jnp.asarray(s))
        np.testing.assert_allclose(g_rev, q * (np.log(q) - np.log(p) - rev[..., None]), atol=1e-6)
        g_fwd = jax.grad(lambda z: losses.full_forward_kl(z, jnp.asarray(t)).sum())(jnp.asarray(s))
        np.testing.assert_allclose(g_fwd, q - p, atol=1e-6)


def test_generalized_jsd_limits_symmetry_and_sign():
    r = np.random.default_rng(1)
    with x64():
        s, t = jnp.asarray(r.normal(size=(4, 9)) * 3), jnp.asarray(r.normal(size=(4, 9)) * 3)
        np.testing.assert_allclose(losses.generalized_jsd(s, t, 0.0), losses.full_forward_kl(s, t), atol=1e-12)
        np.testing.assert_allclose(losses.generalized_jsd(s, t, 1.0), losses.full_reverse_kl(s, t), atol=1e-12)
        np.testing.assert_allclose(losses.generalized_jsd(s, t, 0.5), losses.generalized_jsd(t, s, 0.5), atol=1e-12)
        q, p = _softmax(np.asarray(s)), _softmax(np.asarray(t))
        for beta in (0.1, 0.3, 0.7, 0.9):
            m = (1 - beta) * q + beta * p
            brute = beta * (p * np.log(p / m)).sum(-1) + (1 - beta) * (q * np.log(q / m)).sum(-1)
            got = losses.generalized_jsd(s, t, beta)
            np.testing.assert_allclose(got, brute, atol=1e-12)
            assert np.all(np.asarray(got) >= 0)
        assert np.all(np.asarray(losses.generalized_jsd(s, s, 0.3)) < 1e-12)


# --- 3, 4: the sampled-token surrogate and its IS truncation ---------------------------------------------------

@pytest.mark.parametrize("off_policy", [False, True])
def test_sampled_token_gradient_is_unbiased_for_reverse_kl(off_policy):
    """E_{y~μ}[∇ℓ] = ∇KL(q||p) with w = q/μ (untruncated); the Monte-Carlo mean of 2e5 samples within 3σ."""
    r = np.random.default_rng(2)
    V, N = 6, 200_000
    with x64():
        z, t = jnp.asarray(r.normal(size=V)), jnp.asarray(r.normal(size=V) * 1.5)
        logp_t = jax.nn.log_softmax(t)
        q = np.asarray(jax.nn.softmax(z))
        mu = _softmax(r.normal(size=V)) if off_policy else q
        ys = jnp.asarray(r.choice(V, size=N, p=mu))
        log_mu = jnp.log(jnp.asarray(mu))

        def ell(z, y):
            logq_y = jax.nn.log_softmax(z)[y]
            loss, _ = losses.sampled_token_opd(logq_y, logp_t[y], log_mu[y], is_low=0.0, is_high=1e9)
            return loss

        g = jax.jit(jax.vmap(jax.grad(ell), in_axes=(None, 0)))(z, ys)
        analytic = jax.grad(lambda z: losses.full_reverse_kl(z, t))(z)
        mean, se = np.asarray(g.mean(0)), np.asarray(g.std(0)) / np.sqrt(N)
        assert np.all(np.abs(mean - analytic) <= 3 * se + 1e-9), (mean, analytic, se)


def test_is_truncation_outside_the_band_gives_exactly_zero_loss_and_grad():
    ratios = np.array([0.05, 0.19, 0.21, 1.0, 3.0, 4.9, 5.2, 80.0])
    behavior = jnp.full((8,), -2.0)
    target = behavior + jnp.log(jnp.asarray(ratios, jnp.float32))
    teacher = jnp.full((8,), -1.0)
    f = lambda lp: losses.sampled_token_opd(lp, teacher, behavior, is_low=0.2, is_high=5.0)
    (loss, w), g = f(target), jax.grad(lambda lp: f(lp)[0].sum())(target)
    outside = (ratios < 0.2) | (ratios > 5.0)
    assert np.all(np.asarray(loss)[outside] == 0) and np.all(np.asarray(g)[outside] == 0)
    assert np.all(np.asarray(w)[outside] == 0)
    assert np.all(np.asarray(g)[~outside] != 0)


# --- 5: salient (top-k) KL ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("direction,beta", [("reverse", 1.0), ("forward", 1.0), ("jsd", 0.5)])
def test_salient_kl_bounds_and_full_support(direction, beta):
    r = np.random.default_rng(3)
    V = 12
    with x64():
        s, t = jnp.asarray(r.normal(size=(2, 7, V)) * 2), jnp.asarray(r.normal(size=(2, 7, V)) * 2)
        full = losses.divergence(jax.nn.log_softmax(s), jax.nn.log_softmax(t), direction=direction, beta=beta)

        @functools.partial(jax.jit, static_argnums=0)
        def salient(k, s, t):
            teacher = _teacher_from_logits(t, k)
            support = jnp.take_along_axis(jax.nn.log_softmax(s), teacher["topk_ids"], -1)
            return [losses.salient_kl(support, teacher, direction=direction, beta=beta, mode=mode)
                    for mode in ("tail", "renorm")]

        for k in (1, 3, 7, V):
            tail, renorm = salient(k, s, t)
            assert np.all(np.asarray(tail) >= -1e-12)
            assert np.all(np.asarray(tail) <= np.asarray(full) + 1e-9)
            if k == V:
                np.testing.assert_allclose(tail, full, atol=1e-9)
                np.testing.assert_allclose(renorm, full, atol=1e-9)


def test_salient_kl_missing_teacher_gives_zero_value_and_grad_even_with_garbage():
    r = np.random.default_rng(4)
    s = jnp.asarray(r.normal(size=(2, 5, 10)), jnp.float32)
    teacher = _teacher_from_logits(r.normal(size=(2, 5, 10)), 4)
    valid = np.ones((2, 5), np.float32)
    valid[0, 1:3] = 0
    teacher["valid"] = jnp.asarray(valid)
    teacher["topk_logp"] = jnp.where(jnp.asarray(valid)[..., None] > 0, teacher["topk_logp"], jnp.nan)
    teacher["tail_logp"] = jnp.where(jnp.asarray(valid) > 0, teacher["tail_logp"], jnp.nan)

    def f(s):
        support = jnp.take_along_axis(jax.nn.log_softmax(s), teacher["topk_ids"], -1)
        return losses.salient_kl(support, teacher)

    value, g = jax.jit(f)(s), jax.jit(jax.grad(lambda s: f(s).sum()))(s)
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(value)[valid == 0] == 0) and np.all(np.asarray(g)[valid == 0] == 0)
    assert np.all(np.asarray(value)[valid > 0] > 0)


def test_with_sampled_token_moves_the_target_mass_out_of_the_tail():
    r = np.random.default_rng(5)
    t = r.normal(size=(1, 6, 9)) * 2
    targets = jnp.asarray(r.integers(0, 9, (1, 6)), jnp.int32)
    teacher = _teacher_from_logits(t, 3, targets)
    aug = losses.with_sampled_token(teacher, targets)
    assert aug["topk_ids"].shape == (1, 6, 4)
    inside = np.any(np.asarray(teacher["topk_ids"]) == np.asarray(targets)[..., None], -1)
    np.testing.assert_array_equal(np.asarray(aug["topk_ids"][..., 3]) == -1, inside)
    p = np.asarray(jax.nn.softmax(jnp.asarray(t), -1))
    ids = np.asarray(aug["topk_ids"])
    support_mass = np.array([[p[0, i, ids[0, i][ids[0, i] >= 0]].sum() for i in range(6)]])
    np.testing.assert_allclose(np.exp(aug["tail_logp"]), 1 - support_mass, rtol=1e-4, atol=1e-6)


# --- 6: chunked statistics ----------------------------------------------------------------------------------------

def _problem(seed=6, B=2, T=13, D=16, V=50, K=5):
    r = np.random.default_rng(seed)
    hidden = jnp.asarray(r.normal(size=(B, T, D)), jnp.float32)
    w = jnp.asarray(r.normal(size=(D, V)) * 0.5, jnp.float32)
    targets = jnp.asarray(r.integers(0, V, (B, T)), jnp.int32)
    ids = r.integers(0, V, (B, T, K)).astype(np.int32)
    ids[0, 2, 1:] = -1
    return hidden, w, targets, jnp.asarray(ids)


@pytest.mark.parametrize("chunk", [1, 7, 13])
def test_chunked_stats_equal_unchunked_values_and_gradients(chunk):
    hidden, w, targets, ids = _problem()

    def scalar(stats):
        sup = jnp.where(ids >= 0, stats.support_logp, 0.0)
        return jnp.sum(stats.target_logp * 1.3) + jnp.sum(jnp.sin(sup)) + jnp.sum(stats.entropy * 0.7) \
            + jnp.sum(stats.lse * 0.1)

    chunked = lambda h, w: losses.chunked_logits_stats(h, w, targets, ids, chunk=chunk)
    dense = lambda h, w: losses.logits_stats(jnp.einsum("btd,dv->btv", h, w), targets, ids)
    a, b = jax.jit(chunked)(hidden, w), jax.jit(dense)(hidden, w)
    for name in ("target_logp", "lse", "entropy", "support_logp"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-5, err_msg=name)
    ga = jax.jit(jax.grad(lambda h, w: scalar(chunked(h, w)), argnums=(0, 1)))(hidden, w)
    gb = jax.jit(jax.grad(lambda h, w: scalar(dense(h, w)), argnums=(0, 1)))(hidden, w)
    for x, y in zip(ga, gb):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_chunked_stats_skip_fully_masked_chunks_without_changing_masked_in_values():
    hidden, w, targets, ids = _problem()
    mask = np.zeros((2, 13), np.float32)
    mask[0, 3] = mask[1, 12] = 1
    a = losses.chunked_logits_stats(hidden, w, targets, ids, chunk=4, mask=jnp.asarray(mask))
    b = losses.chunked_logits_stats(hidden, w, targets, ids, chunk=4)
    keep = mask > 0
    np.testing.assert_allclose(np.asarray(a.target_logp)[keep], np.asarray(b.target_logp)[keep], rtol=1e-6)
    assert np.all(np.asarray(a.target_logp)[:, 4:12] == 0)  # chunks [4, 8) and [8, 12) were never projected


# --- 7, 8: multi-teacher routing, reductions, masking ------------------------------------------------------------

def _routed_problem(seed=7, B=2, T=10, V=16, K=4):
    """Row 0: two segments of domains 0 and 1; row 1: domain 1 then padding. Teachers a and b routed by domain."""
    r = np.random.default_rng(seed)
    seg = np.array([[1] * 6 + [2] * 4, [1] * 8 + [0] * 2], np.int32)
    dom = np.array([[0] * 6 + [1] * 4, [1] * 10], np.int32)
    mask = ((r.random((B, T)) < 0.8) & (seg != 0)).astype(np.float32)
    mask[0, 0] = mask[0, 6] = mask[1, 0] = 1
    targets = jnp.asarray(r.integers(0, V, (B, T)), jnp.int32)
    t_a, t_b = r.normal(size=(B, T, V)) * 2, r.normal(size=(B, T, V)) * 2
    teacher_a, teacher_b = _teacher_from_logits(t_a, K, targets), _teacher_from_logits(t_b, K, targets)
    z = jnp.asarray(r.normal(size=(B, T, V)), jnp.float32)
    batch = {"loss_mask": jnp.asarray(mask), "segment_ids": jnp.asarray(seg), "domain_ids": jnp.asarray(dom),
             "targets": targets,
             "behavior_logp": jnp.take_along_axis(jax.nn.log_softmax(z), targets[..., None], -1)[..., 0]
             + jnp.asarray(r.normal(size=(B, T)) * 0.3, jnp.float32),
             "advantages": jnp.asarray(r.normal(size=(B, T)), jnp.float32)}
    return z, batch, teacher_a, teacher_b


def _route(teacher_a, teacher_b, dom):
    pick = lambda a, b: jnp.where((dom == 0).reshape(dom.shape + (1,) * (a.ndim - 2)), a, b)
    return jax.tree.map(pick, teacher_a, teacher_b)


def _opd_loss(z, batch, teacher, **kw):
    stats = losses.logits_stats(z, batch["targets"], teacher["topk_ids"])
    return losses.multi_teacher_opd_loss(stats, teacher, batch, num_domains=2, **kw)[0]


_STATIC = ("estimator", "domain_weighting", "kl_power", "sft_coef", "reward_coef")
_opd = jax.jit(_opd_loss, static_argnames=_STATIC)
_opd_vg = jax.jit(jax.value_and_grad(_opd_loss), static_argnames=_STATIC)
EXTRA = dict(sft_coef=0.3, reward_coef=0.5)  # the optional terms on: shared by the gradient tests (one compile each)


def test_routed_loss_equals_each_domain_with_its_own_teacher():
    z, batch, ta, tb = _routed_problem()
    routed = _route(ta, tb, batch["domain_ids"])
    only = lambda d: dict(batch, loss_mask=batch["loss_mask"] * (batch["domain_ids"] == d))
    for estimator in ("salient", "sampled", "mix", "full"):
        both = _opd(z, batch, routed, estimator=estimator)
        a, b = _opd(z, only(0), ta, estimator=estimator), _opd(z, only(1), tb, estimator=estimator)
        np.testing.assert_allclose(both, (a + b) / 2, rtol=1e-5, err_msg=estimator)


def test_changing_teacher_b_leaves_domain_a_gradients_unchanged():
    z, batch, ta, tb = _routed_problem()
    _, _, _, tb2 = _routed_problem(seed=99)
    a_tokens = np.asarray(batch["domain_ids"] == 0)
    for estimator in ("salient", "sampled"):
        _, g1 = _opd_vg(z, batch, _route(ta, tb, batch["domain_ids"]), estimator=estimator, **EXTRA)
        _, g2 = _opd_vg(z, batch, _route(ta, tb2, batch["domain_ids"]), estimator=estimator, **EXTRA)
        np.testing.assert_allclose(np.asarray(g1)[a_tokens], np.asarray(g2)[a_tokens], rtol=1e-6, atol=1e-7)
        assert not np.allclose(np.asarray(g1)[~a_tokens], np.asarray(g2)[~a_tokens])


def test_domain_norm_gives_a_2_token_domain_the_weight_of_a_2000_token_domain():
    T = 2002
    mask, seg = jnp.ones((1, T)), jnp.ones((1, T), jnp.int32)
    dom = jnp.asarray(np.r_[[0, 0], np.ones(T - 2)][None], jnp.int32)
    w = losses.token_weights(mask, seg, dom, norm="domain", num_domains=2)
    np.testing.assert_allclose(losses.domain_sums(w, dom, 2), [0.5, 0.5], rtol=1e-4)
    per_token = jnp.where(dom == 0, 3.0, 1.0)
    np.testing.assert_allclose(jnp.sum(w * per_token), 2.0, rtol=1e-4)  # token norm would give ~1.002
    w_tok = losses.token_weights(mask, seg, dom, norm="token")
    np.testing.assert_allclose(jnp.sum(w_tok * per_token), (2 * 3 + 2000) / 2002, rtol=1e-4)
    fixed = losses.token_weights(mask, seg, dom, norm="domain", num_domains=2, domain_weights=(3.0, 1.0))
    np.testing.assert_allclose(losses.domain_sums(fixed, dom, 2), [0.75, 0.25], rtol=1e-4)


def test_sequence_norm_averages_per_segment_means():
    mask = jnp.asarray([[1, 1, 1, 1, 0, 1]], jnp.float32)
    seg = jnp.asarray([[1, 1, 1, 1, 2, 2]], jnp.int32)
    w = losses.token_weights(mask, seg, jnp.zeros_like(seg), norm="sequence")
    np.testing.assert_allclose(w, [[1 / 8, 1 / 8, 1 / 8, 1 / 8, 0, 1 / 2]], rtol=1e-6)


def test_kl_domain_weighting_scales_each_domain_by_its_kl():
    """Salient with per-token loss = KL: domain means L_d = KL_d, weights ∝ KL_d ⇒ loss = Σ KL_d² / Σ KL_d."""
    z, batch, ta, tb = _routed_problem()
    routed = _route(ta, tb, batch["domain_ids"])
    batch = dict(batch, behavior_logp=jnp.take_along_axis(jax.nn.log_softmax(z), batch["targets"][..., None],
                                                          -1)[..., 0])
    stats = losses.logits_stats(z, batch["targets"], routed["topk_ids"])
    _, m = losses.multi_teacher_opd_loss(stats, routed, batch, num_domains=2)
    kl_d = np.asarray(m["domain_kl_sum"] / m["domain_tokens"])
    got = _opd(z, batch, routed, domain_weighting="kl", kl_power=1.0)
    np.testing.assert_allclose(got, (kl_d ** 2).sum() / kl_d.sum(), rtol=1e-4)
    np.testing.assert_allclose(_opd(z, batch, routed, domain_weighting="kl", kl_power=0.0),
                               _opd(z, batch, routed), rtol=1e-5)
    empty = dict(batch, loss_mask=jnp.zeros_like(batch["loss_mask"]))
    assert float(_opd(z, empty, routed, domain_weighting="kl", kl_power=1.0)) == 0.0


def test_masked_tokens_targets_and_teacher_values_do_not_matter():
    z, batch, ta, tb = _routed_problem()
    teacher = _route(ta, tb, batch["domain_ids"])
    off = np.asarray(batch["loss_mask"]) == 0
    r = np.random.default_rng(8)
    garbage = dict(teacher)
    garbage["topk_logp"] = jnp.where(jnp.asarray(off)[..., None], jnp.nan, teacher["topk_logp"])
    garbage["sampled_logp"] = jnp.where(jnp.asarray(off), 123.0, teacher["sampled_logp"])
    garbage["tail_logp"] = jnp.where(jnp.asarray(off), jnp.inf, teacher["tail_logp"])
    targets2 = jnp.where(jnp.asarray(off), jnp.asarray(r.integers(0, 16, off.shape), jnp.int32), batch["targets"])
    batch2 = dict(batch, targets=targets2, advantages=jnp.where(jnp.asarray(off), 1e6, batch["advantages"]))
    kw = EXTRA
    for estimator in ("salient", "sampled", "mix"):
        l1, g1 = _opd_vg(z, batch, teacher, estimator=estimator, **kw)
        # masked-out positions may hold anything, even NaN teacher values, once the teacher marks them invalid
        g_teacher = dict(garbage, valid=teacher["valid"] * (1 - off))
        l2, g2 = _opd_vg(z, batch2, g_teacher, estimator=estimator, **kw)
        np.testing.assert_allclose(l1, l2, rtol=1e-6, err_msg=estimator)
        np.testing.assert_allclose(g1, g2, rtol=1e-6, atol=1e-8, err_msg=estimator)


@pytest.mark.parametrize("estimator", ["salient", "sampled", "mix", "full"])
def test_fully_masked_batch_gives_zero_loss_and_no_nan(estimator):
    z, batch, ta, tb = _routed_problem()
    batch = dict(batch, loss_mask=jnp.zeros_like(batch["loss_mask"]))
    loss, g = _opd_vg(z, batch, _route(ta, tb, batch["domain_ids"]), estimator=estimator, **EXTRA)
    assert float(loss) == 0.0 and np.all(np.asarray(g) == 0)
    pg, _ = losses.policy_gradient_loss(batch["behavior_logp"], batch["behavior_logp"], batch["advantages"])
    w = losses.token_weights(batch["loss_mask"], batch["segment_ids"], batch["domain_ids"], norm="sequence")
    assert float(jnp.sum(w * pg)) == 0.0
    sft, _ = losses.sft_loss(batch["behavior_logp"], batch["loss_mask"], batch["segment_ids"], batch["domain_ids"],
                             norm="domain", num_domains=2)
    assert float(sft) == 0.0


def test_every_loss_is_the_same_chunked_or_unchunked():
    z, batch, ta, tb = _routed_problem()
    teacher = losses.with_sampled_token(_route(ta, tb, batch["domain_ids"]), batch["targets"])
    r = np.random.default_rng(9)
    hidden = jnp.asarray(r.normal(size=(2, 10, 8)), jnp.float32)
    w = jnp.asarray(r.normal(size=(8, 16)), jnp.float32)

    def loss(h, chunked, estimator, norm):
        if chunked:
            stats = losses.chunked_logits_stats(h, w, batch["targets"], teacher["topk_ids"], chunk=3,
                                                mask=batch["loss_mask"])
        else:
            stats = losses.logits_stats(jnp.einsum("btd,dv->btv", h, w), batch["targets"], teacher["topk_ids"])
        opd, _ = losses.multi_teacher_opd_loss(stats, teacher, batch, estimator=estimator, norm=norm, num_domains=2,
                                               sft_coef=0.2, reward_coef=0.1)
        sft, _ = losses.sft_loss(stats.target_logp, batch["loss_mask"], batch["segment_ids"], batch["domain_ids"],
                                 norm=norm, num_domains=2)
        pg, _ = losses.policy_gradient_loss(stats.target_logp, batch["behavior_logp"], batch["advantages"],
                                            ref_logp=batch["behavior_logp"] - 0.1, kl_coef=0.05)
        return opd + sft + jnp.sum(jnp.where(batch["loss_mask"] > 0, pg, 0.0))

    @functools.partial(jax.jit, static_argnums=(1, 2))
    def both(h, estimator, norm):
        return [jax.value_and_grad(loss)(h, c, estimator, norm) for c in (True, False)]

    for estimator, norm in (("salient", "token"), ("sampled", "sequence"), ("mix", "domain")):
        (l1, g1), (l2, g2) = both(hidden, estimator, norm)
        np.testing.assert_allclose(l1, l2, rtol=1e-5, err_msg=estimator)
        np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6, err_msg=estimator)
