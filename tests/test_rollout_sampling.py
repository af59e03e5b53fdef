"""Sampling controls: filtered samples never leave the kept set, penalties move logits as defined, and the recorded
sampling log-prob is that of the filtered, penalised, tempered distribution."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax.rollout.sampling import SamplingParams, apply_penalties, filter_logits, sample

V = 64


def _logits(seed=0, B=4):
    return jax.random.normal(jax.random.PRNGKey(seed), (B, V)) * 3.0


def _kept_reference(row, sp):
    """Sort-based definition: top-k, then the smallest prefix with mass >= top_p, then p >= min_p * p_max."""
    order = np.argsort(-row, kind="stable")
    k = sp.top_k or V
    cand = order[:k]
    p = np.exp(row[cand] - row[cand].max())
    p /= p.sum()
    n = int(np.searchsorted(np.cumsum(p), sp.top_p) + 1) if sp.top_p < 1 else k
    cand, p = cand[:n], p[:n]
    return set(cand[p >= sp.min_p * p.max()].tolist())


@pytest.mark.parametrize("sp", [SamplingParams(top_k=5, top_p=1.0, presence_penalty=0),
                                SamplingParams(top_k=0, top_p=0.6, presence_penalty=0),
                                SamplingParams(top_k=0, top_p=1.0, min_p=0.2, presence_penalty=0),
                                SamplingParams(top_k=20, top_p=0.9, min_p=0.05, presence_penalty=0)])
def test_filtered_sampling_never_leaves_the_kept_set(sp):
    logits = _logits()
    kept = [_kept_reference(np.asarray(row), sp) for row in logits]
    filtered = np.asarray(filter_logits(logits, sp))
    for b in range(logits.shape[0]):
        assert set(np.nonzero(np.isfinite(filtered[b]))[0].tolist()) == kept[b]
    no = jnp.zeros((4, V), bool)
    draw = jax.jit(lambda k: sample(k, logits * sp.temperature, no, no, sp)[0])
    for key in jax.random.split(jax.random.PRNGKey(1), 200):
        toks = np.asarray(draw(key))
        assert all(int(t) in kept[b] for b, t in enumerate(toks))


def test_presence_and_repetition_penalties_move_logits_as_defined():
    logits = jnp.asarray([[2.0, -2.0, 1.0, -1.0]])
    generated = jnp.asarray([[True, True, False, False]])
    context = jnp.asarray([[True, True, True, False]])
    out = apply_penalties(logits, generated, context, SamplingParams(presence_penalty=0.5, repetition_penalty=2.0))
    # presence: -0.5 on generated tokens; then repetition: positive / 2, negative * 2 on the context
    np.testing.assert_allclose(np.asarray(out), [[0.75, -5.0, 0.5, -1.0]])


def test_sampling_logprob_is_under_the_shaped_distribution_and_t1_under_raw_logits():
    sp = SamplingParams(temperature=0.5, top_k=8, top_p=0.9, presence_penalty=1.0)
    logits = _logits(2)
    gen = jnp.zeros((4, V), bool).at[:, :10].set(True)
    tok, lp, lp1 = sample(jax.random.PRNGKey(5), logits, gen, gen, sp)
    shaped = filter_logits(apply_penalties(logits, gen, gen, sp) / sp.temperature, sp)
    want = jnp.take_along_axis(jax.nn.log_softmax(shaped), tok[:, None], 1)[:, 0]
    want1 = jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None], 1)[:, 0]
    np.testing.assert_allclose(lp, want, rtol=1e-5)
    np.testing.assert_allclose(lp1, want1, rtol=1e-5)


def test_greedy_is_argmax_and_defaults_are_the_agents_a1_recommendation():
    logits = _logits(3)
    no = jnp.zeros((4, V), bool)
    tok, lp, _ = sample(jax.random.PRNGKey(0), logits, no, no, SamplingParams.greedy())
    np.testing.assert_array_equal(tok, jnp.argmax(logits, -1))
    assert float(jnp.abs(lp).max()) == 0.0
    d = SamplingParams()
    assert (d.temperature, d.top_p, d.top_k, d.presence_penalty) == (0.85, 0.95, 20, 1.1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
