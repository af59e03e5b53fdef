"""The engine against full forwards: greedy = step-by-step argmax, recorded log-probs = forward log-probs, and a
cache extended across turns (rows of different lengths, frozen rows) = a fresh prefill of the whole prefix."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a1jax import model as M
from a1jax.rollout import Engine, SamplingParams

CFG = M.presets.tiny()


@pytest.fixture(scope="module")
def params():
    return M.unbox(M.init(CFG, jax.random.PRNGKey(0), include_mtp=False))


def _full_logits(params, ids):
    return np.asarray(M.forward(params, jnp.asarray([ids]), CFG, return_logits=True).logits[0])


def _engine(params, **kw):
    kw = {"batch_size": 3, "max_len": 96, "stop_ids": (7,), "max_new_tokens": 6, "chunk_sizes": (8, 1),
          "sampling": SamplingParams.greedy(), **kw}
    return Engine(params, CFG, **kw)


def test_greedy_generation_equals_stepwise_argmax_of_full_forwards(params):
    prompts = {0: [5, 9, 11, 3, 200, 17, 41, 8, 99, 100, 2], 1: [1, 2, 3], 2: [300, 301, 302, 303, 304]}
    eng = _engine(params)
    for r in prompts:
        eng.start_row(r)
    eng.extend(prompts)
    out = eng.generate([0, 1, 2])
    for r, ids in prompts.items():
        ids = list(ids)
        for tok in out[r]["tokens"]:
            assert tok == int(np.argmax(_full_logits(params, ids)[-1]))
            ids.append(tok)
        assert len(out[r]["tokens"]) == 6 or out[r]["finish_reason"] == "stop"


def test_behaviour_logprobs_equal_full_forward_logprobs_at_t1(params):
    sp = SamplingParams(temperature=0.7, top_k=50, top_p=0.9, presence_penalty=0.5)
    eng = _engine(params, sampling=sp, seed=3)
    prompt = [4, 8, 15, 16, 23, 42]
    eng.start_row(1)
    eng.extend({1: prompt})
    out = eng.generate([1])[1]
    ids = prompt + out["tokens"]
    logp = jax.nn.log_softmax(_full_logits(params, ids), axis=-1)
    want = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(out["tokens"])]
    np.testing.assert_allclose(out["logprobs_t1"], want, atol=2e-4)
    assert all(lp <= 1e-6 for lp in out["logprobs"])  # log-probs of a (filtered) distribution


def test_cache_extension_across_turns_equals_fresh_prefill(params):
    eng = _engine(params)
    turn1 = {0: list(range(10, 23)), 1: [3, 4], 2: list(range(50, 59))}
    for r in turn1:
        eng.start_row(r)
    eng.extend(turn1)
    gen = eng.generate([0, 2])  # row 1 stays frozen during decode
    turn2 = {0: [61, 62, 63], 1: list(range(70, 80)), 2: [90]}
    eng.extend(turn2)
    for r in range(3):
        prefix = turn1[r] + gen.get(r, {"tokens": []})["tokens"] + turn2[r]
        fresh = _engine(params)
        fresh.start_row(0)
        fresh.extend({0: prefix})
        np.testing.assert_allclose(np.asarray(eng.last_logits[r]), np.asarray(fresh.last_logits[0]), atol=2e-4)
        np.testing.assert_allclose(np.asarray(eng.last_logits[r]), _full_logits(params, prefix)[-1], atol=2e-4)


def test_refilled_row_forgets_its_previous_conversation(params):
    eng = _engine(params)
    eng.start_row(0)
    eng.extend({0: list(range(100, 120))})
    eng.start_row(0)
    eng.extend({0: [5, 6, 7, 8]})
    np.testing.assert_allclose(np.asarray(eng.last_logits[0]), _full_logits(params, [5, 6, 7, 8])[-1], atol=2e-4)


def test_generation_stops_per_row_on_stop_id_budget_and_context(params):
    eng = _engine(params, max_new_tokens=5)
    prompt = [11, 12, 13]
    for r in range(3):
        eng.start_row(r)
    eng.extend({r: prompt for r in range(3)})
    first = int(np.argmax(_full_logits(params, prompt)[-1]))
    eng.stop_ids = jnp.asarray([first], jnp.int32)  # greedy: every row stops after one token
    out = eng.generate([0, 1], budget={1: 1})
    assert out[0]["tokens"] == [first] and out[0]["finish_reason"] == "stop"
    small = _engine(params, max_new_tokens=5, stop_ids=(-1,))
    small.start_row(0)
    small.extend({0: list(range(1, small.max_len - 2))})  # three free slots left
    out = small.generate([0], budget={0: 2})[0]
    assert len(out["tokens"]) == 2 and out["finish_reason"] == "length"
    out = small.generate([0])[0]
    assert len(out["tokens"]) == 1 and out["finish_reason"] == "context"


def test_generation_stops_at_a_stop_sequence(params):
    prompt = [21, 22, 23, 24]
    eng = _engine(params, stop_ids=(-1,))
    eng.start_row(0)
    eng.extend({0: prompt})
    free = eng.generate([0])[0]["tokens"]
    eng = _engine(params, stop_ids=(-1,), stop_sequences=[free[1:3]])
    eng.start_row(2)
    eng.extend({2: prompt})
    out = eng.generate([2])[2]
    assert out["tokens"] == free[:3] and out["finish_reason"] == "stop"


def test_engine_runs_on_fsdp_sharded_params_and_matches_one_device(params):
    from a1jax import sharding
    boxed = M.init(CFG, jax.random.PRNGKey(0), include_mtp=False)
    mesh = sharding.make_mesh(dict(data=2, fsdp=2), jax.devices()[:4])
    shardings = sharding.tree_shardings(M.unbox(boxed), M.logical_axes(boxed), mesh, sharding.merged_rules())
    sharded = jax.device_put(M.unbox(boxed), shardings)
    assert sharded["embed"].sharding.spec != jax.sharding.PartitionSpec()
    outs = []
    for p in (params, sharded):
        eng = _engine(p)
        eng.start_row(1)
        eng.extend({1: [9, 8, 7, 6, 5]})
        outs.append(eng.generate([1])[1]["tokens"])
    assert outs[0] == outs[1]


def test_turns_and_requests_of_new_lengths_do_not_recompile(params):
    from a1jax.rollout import engine as E
    eng = _engine(params)
    eng.start_row(0)
    eng.extend({0: [1] * 9})  # touches both chunk buckets
    eng.generate([0])
    sizes = (E._extend._cache_size(), E._generate._cache_size())
    for n in (3, 17, 5):
        eng.start_row(n % 3)
        eng.extend({n % 3: list(range(2, 2 + n)), (n + 1) % 3: [4] * (n // 2)})
        eng.generate([n % 3, (n + 1) % 3], budget={n % 3: n})
    assert (E._extend._cache_size(), E._generate._cache_size()) == sizes


def test_a_cache_that_grows_by_doublings_decodes_as_one_of_max_len_slots(params):
    """min_slots=8 grows through 16 (the 11-token prompt), then 32, 64 and max_len=96 over the turns; tokens,
    log-probs and the context stop are those of the engine that holds all 96 slots from the start."""
    runs = {}
    for min_slots in (8, 96):
        eng = _engine(params, min_slots=min_slots, stop_ids=(-1,))
        sizes = [eng.slots]
        for r in range(3):
            eng.start_row(r)
        eng.extend({0: [5, 9, 11, 3, 200, 17, 41, 8, 99, 100, 2], 1: [1, 2, 3], 2: [300, 301]})
        sizes.append(eng.slots)
        turns = [eng.generate([0, 1, 2], budget={1: 3})]
        eng.extend({0: [4, 4], 2: list(range(20, 50))})
        turns.append(eng.generate([0, 2]))
        eng.extend({1: list(range(60, 60 + eng.max_len - eng.index - 2))})  # two free slots left
        turns.append(eng.generate([1]))
        sizes.append(eng.slots)
        runs[min_slots] = turns, sizes
    (grown, sizes), (full, full_sizes) = runs[8], runs[96]
    assert sizes == [8, 16, 96] and full_sizes == [96, 96, 96]
    assert grown[-1][1]["finish_reason"] == "context" and len(grown[-1][1]["tokens"]) == 2
    for a, b in zip(grown, full):
        assert a.keys() == b.keys()
        for r in a:
            assert a[r]["tokens"] == b[r]["tokens"] and a[r]["finish_reason"] == b[r]["finish_reason"]
            np.testing.assert_allclose(a[r]["logprobs"], b[r]["logprobs"], rtol=1e-5, atol=1e-5)
