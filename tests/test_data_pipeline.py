"""The grain pipeline: exact resume, determinism, epochs, weighted mixing, per-process sharding, the token cache."""
import collections
import json
from pathlib import Path

import numpy as np
import pytest

from a1jax.data import cache as token_cache
from a1jax.data import packing, pipeline
from a1jax.data.pipeline import PipelineConfig, Source

QUICKSTART = Path(__file__).resolve().parents[1] / "data" / "quickstart"
FIXTURES = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("token_cache"))


def _config(cache_dir, **overrides):
    sources = (Source((str(QUICKSTART / "tau_bench_airline.jsonl"),), weight=2.0),
               Source((str(QUICKSTART / "toolbench.jsonl"), str(QUICKSTART / "swe_agent.jsonl"))))
    values = dict(sources=sources, seq_len=4096, batch_size=2, cache_dir=cache_dir, seed=0)
    return PipelineConfig(**{**values, **overrides})


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _segments(batches):
    return [(s["tokens"].tobytes(), s["domain_id"]) for b in batches for s in packing.unpack(b)]


def test_batches_have_the_documented_keys_shapes_and_dtypes(cache_dir):
    it = pipeline.make_iterator(_config(cache_dir))
    batch = next(it)
    assert set(batch) == set(packing.BATCH_KEYS)
    assert all(v.shape == (2, 4096) for v in batch.values())
    assert batch["loss_mask"].dtype == np.float32 and batch["tokens"].dtype == np.int32
    assert it.domains == {"customer_service": 0, "engineering": 1, "general_agentic": 2}
    assert pipeline.domain_table(_config(cache_dir)) == it.domains
    # loss only where the target is in the same segment
    same_segment = np.zeros_like(batch["segment_ids"], bool)
    same_segment[:, :-1] = (batch["segment_ids"][:, 1:] == batch["segment_ids"][:, :-1]) & (batch["segment_ids"][:, :-1] > 0)
    assert not batch["loss_mask"][~same_segment].any()


def test_iterator_resumes_exactly(cache_dir):
    config = _config(cache_dir)
    it = pipeline.make_iterator(config)
    straight, states = [], []
    for batch in it:
        straight.append(batch)
        states.append(json.loads(json.dumps(it.get_state())))  # survives a JSON checkpoint
    # the hard case must occur: a batch boundary inside a split trajectory
    mid_split = [n for n, s in enumerate(states, 1) if s["replay"] and s["used"] > 0]
    assert mid_split and it.counts[packing.SPLIT] > 0
    for n in sorted({1, 3, mid_split[0], mid_split[-1], len(straight) // 2}):
        if 2 * n > len(straight):
            continue
        first = pipeline.make_iterator(config)
        head = _take(first, n)
        state = json.loads(json.dumps(first.get_state()))
        resumed = pipeline.make_iterator(config)
        resumed.set_state(state)
        _assert_same_batches(head + _take(resumed, n), straight[:2 * n])
    # restoring the final state yields nothing more, and the counts carry over
    done = pipeline.make_iterator(config)
    done.set_state(states[-1])
    assert list(done) == [] and done.counts == it.counts


def test_counts_survive_a_restore(cache_dir):
    config = _config(cache_dir)
    it = pipeline.make_iterator(config)
    list(it)
    resumed = pipeline.make_iterator(config)
    head = pipeline.make_iterator(config)
    _take(head, 5)
    resumed.set_state(head.get_state())
    list(resumed)
    assert resumed.counts == it.counts
    assert sum(it.counts[o] for o in packing.OUTCOMES) == 76 + 12 + 20  # an epoch: as many draws as records


def test_same_seed_same_batches_other_seed_other_order(cache_dir):
    a = _take(pipeline.make_iterator(_config(cache_dir)), 4)
    b = _take(pipeline.make_iterator(_config(cache_dir)), 4)
    c = _take(pipeline.make_iterator(_config(cache_dir, seed=1)), 4)
    _assert_same_batches(a, b)
    assert _segments(a) != _segments(c)


def test_each_epoch_sees_every_record_once_in_a_new_order(cache_dir):
    # one row per batch, so segments come out in the order records were drawn
    config = _config(cache_dir, sources=(Source((str(QUICKSTART / "toolbench.jsonl"),)),), seq_len=32_768,
                     batch_size=1, num_epochs=3)
    segments = [s for s, _ in _segments(list(pipeline.make_iterator(config)))]
    records = token_cache.load_or_build(QUICKSTART / "toolbench.jsonl", _tokenizer(), cache_dir=cache_dir)
    originals = [records[i]["tokens"].tobytes() for i in range(len(records))]
    assert len(segments) == 3 * len(originals)
    epochs = [segments[i * 12:(i + 1) * 12] for i in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(originals)
    assert epochs[0] != epochs[1] != epochs[2]


def _tokenizer():
    from a1jax.data import tokenizers
    return tokenizers.load("qwen3_5")


def test_sources_are_mixed_in_proportion_to_their_weights(cache_dir):
    config = _config(cache_dir, sources=(
        Source((str(QUICKSTART / "toolbench.jsonl"),), weight=3.0, domain="tools"),
        Source((str(QUICKSTART / "tau_bench_airline.jsonl"),), weight=1.0, domain="airline")),
        seq_len=32_768, batch_size=4, num_epochs=None)
    it = pipeline.make_iterator(config)
    domains = collections.Counter(d for _, d in _segments(_take(it, 30)))
    names = {v: k for k, v in it.domains.items()}
    ratio = domains[it.domains["tools"]] / domains[it.domains["airline"]]
    assert set(map(names.get, domains)) == {"tools", "airline"}
    assert 2.7 < ratio < 3.3


def test_processes_read_disjoint_shards_that_cover_the_data(cache_dir):
    config = _config(cache_dir, seq_len=32_768, batch_size=4)
    everything = collections.Counter(_segments(list(pipeline.make_iterator(config))))
    shards = [collections.Counter(_segments(list(pipeline.make_iterator(config, process_index=p, process_count=2))))
              for p in range(2)]
    assert next(pipeline.make_iterator(config, process_index=1, process_count=2))["tokens"].shape == (2, 32_768)
    assert shards[0] + shards[1] == everything  # every draw of the mixture lands on exactly one process
    with pytest.raises(ValueError, match="batch_size=4 must be divisible by process_count=3"):
        pipeline.make_iterator(config, process_index=0, process_count=3)


def test_tokenization_is_cached_and_keyed_by_the_data(cache_dir, tmp_path, monkeypatch):
    source = tmp_path / "toolbench.jsonl"
    source.write_bytes((QUICKSTART / "toolbench.jsonl").read_bytes())
    config = _config(str(tmp_path / "cache"), sources=(Source((str(source),)),), seq_len=32_768)
    first = list(pipeline.make_iterator(config))

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again although the cache holds this file")

    monkeypatch.setattr(token_cache, "tokenize_trajectory", no_tokenizing)
    _assert_same_batches(list(pipeline.make_iterator(config)), first)
    source.write_text(source.read_text().splitlines()[0] + "\n")  # new content: a new entry must be built
    with pytest.raises(AssertionError, match="tokenized again"):
        pipeline.make_iterator(config)
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_strict_pipeline_stops_at_the_first_bad_record_and_lenient_one_counts_skips(cache_dir):
    config = _config(cache_dir, sources=(Source((str(FIXTURES / "malformed.jsonl"),)),))
    with pytest.raises(ValueError, match=r"malformed.jsonl:2: message 1: unknown role 'robot'"):
        pipeline.make_iterator(PipelineConfig(**{**config.__dict__, "strict": True}))
    it = pipeline.make_iterator(config)
    assert len(_segments(list(it))) == 2
    entry = token_cache.load_or_build(FIXTURES / "malformed.jsonl", _tokenizer(), cache_dir=cache_dir)
    assert entry.skips.total == 10 and len(entry) == 2


@pytest.mark.parametrize("overrides, message", [
    (dict(seq_len=300_000), r"PipelineConfig.seq_len=300000: expected an integer in \[2, 262144\]"),
    (dict(packing="next_fit"), "PipelineConfig.packing='next_fit': expected one of first_fit, best_fit, single"),
    (dict(overlong="truncate"), "PipelineConfig.overlong='truncate': expected one of drop, split"),
    (dict(num_epochs=0), "PipelineConfig.num_epochs=0: expected a positive integer or None"),
    (dict(sources=(Source(("a.jsonl",), weight=0),)), r"PipelineConfig.sources\[0\].weight=0: expected a positive"),
    (dict(domains=("engineering",)), "lacks domains found in the data: \\['customer_service', 'general_agentic'\\]"),
])
def test_config_errors_name_the_field(cache_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        pipeline.make_iterator(_config(cache_dir, **overrides))


def _long_trajectory(n_rounds=40, lines_per_output=400):
    messages = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": "Audit the log."}]
    for k in range(n_rounds):
        call_id = f"call_{k}"
        messages.append({"role": "assistant", "content": f"Reading part {k}.", "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "bash", "arguments": {"command": f"cat part{k}.log"}}}]})
        output = "\n".join(f"{k:03d}:{i:05d} status=ok latency={i * 7 % 1000}ms" for i in range(lines_per_output))
        messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
    messages.append({"role": "assistant", "content": "All parts are healthy."})
    return {"id": "synthetic/long", "source": "synthetic", "domain": "engineering", "messages": messages,
            "tools": [], "metadata": {}}


def test_the_pipeline_handles_262144_token_rows(cache_dir, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(_long_trajectory()) + "\n")
    config = PipelineConfig(sources=(Source((str(path),)),), seq_len=262_144, batch_size=1, cache_dir=cache_dir)
    entry = token_cache.load_or_build(path, _tokenizer(), cache_dir=cache_dir)
    assert 262_144 < len(entry[0]["tokens"]) < 2 * 262_144
    it = pipeline.make_iterator(config)
    batches = list(it)
    assert len(batches) == 2 and it.counts == {packing.SPLIT: 1, "pieces": 2}
    assert all(b["tokens"].shape == (1, 262_144) for b in batches)
    pieces = [s for b in batches for s in packing.unpack(b)]
    np.testing.assert_array_equal(np.concatenate([p["tokens"] for p in pieces]), entry[0]["tokens"])
    np.testing.assert_array_equal(np.concatenate([p["loss_mask"] for p in pieces]), entry[0]["loss_mask"])
    assert sum(int(b["loss_mask"].sum()) for b in batches) == int(entry[0]["loss_mask"].sum())
