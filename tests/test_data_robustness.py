"""Malformed data never crashes a reader and is never accepted: every bad record is skipped and reported as
`file:line: reason`, the rest of its file is kept, and `--out` is written atomically.

The fuzz test mutates valid records with a seeded generator (type swaps, deletions, deep nesting, lone surrogates,
invalid UTF-8, huge integers, NaN / Infinity, truncation, duplicated lines) and runs them through every data entry
point: the schema reader, the three importers, `a1jax data import` and the token cache.
"""
import copy
import json
import os
import random
from pathlib import Path

import pytest

from a1jax import cli
from a1jax.data import chat, schema, tokenizers
from a1jax.data.cache import load_or_build
from a1jax.data.importers import import_records
from a1jax.data.records import SkipReport, read_records, write_records

SEED = 0
N_PER_ENTRY_POINT = 120  # mutated records per entry point (5 entry-point formats: 600 in all)

CALL = {"id": "c1", "type": "function", "function": {"name": "get_x", "arguments": "{\"q\": 1}"}}
TOOL = {"type": "function", "function": {"name": "get_x", "description": "d",
                                          "parameters": {"type": "object", "properties": {"q": {"type": "integer"}}}}}
MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "content": "out", "tool_call_id": "c1"},
            {"role": "assistant", "content": "done", "reasoning_content": "r"}]


def schema_record(i):
    return {"id": f"r{i}", "source": "s", "domain": "d", "messages": copy.deepcopy(MESSAGES), "tools": [TOOL],
            "metadata": {"k": [1, 2.5, None, True]}}


def tau_entry(i):
    return {"task_id": i, "trial": 0, "reward": 1.0, "info": {"task": {"user_id": "u"}},
            "traj": copy.deepcopy(MESSAGES)}


def toolbench_answer(i):
    return {"win": True, "answer_generation": {
        "valid_data": True, "query": "q", "finish_type": "give_answer",
        "function": [copy.deepcopy(TOOL["function"])],
        "train_messages": [[{"role": "system", "content": "s"}, {"role": "user", "content": "q", "valid": True},
                            {"role": "assistant", "content": "Thought",
                             "function_call": {"name": "get_x", "arguments": "{}"}},
                            {"role": "function", "name": "get_x", "content": "out"},
                            {"role": "assistant", "content": "done"}]]}}


def swe_traj(i):
    if i % 2:
        return {"history": [{"role": "system", "content": "s"}, {"role": "user", "content": "task"},
                            {"role": "assistant", "content": "c", "tool_calls": [copy.deepcopy(CALL)]},
                            {"role": "tool", "content": "out", "tool_call_ids": ["c1"]},
                            {"role": "assistant", "content": "done"}], "info": {"exit_status": "submitted"}}
    return {"history": [{"role": "system", "content": "s"}, {"role": "user", "content": "task"},
                        {"role": "assistant", "thought": "t", "action": "ls\n"}, {"role": "user", "content": "out"},
                        {"role": "assistant", "thought": "done", "action": ""}], "info": {"exit_status": "submitted"}}


# ---- mutations ---------------------------------------------------------------------------------------------------
# Structural ones edit the value (the result may be valid or not); textual ones put something no valid record can
# hold at a random place of the serialized text, so the record must be skipped.
MARK = "__A1JAX_FUZZ__"
TEXTUAL = {
    "deep nesting": lambda rng: ("[" * 5000 + "1" + "]" * 5000).encode(),
    "nesting past MAX_DEPTH": lambda rng: ("{\"a\": " * (schema.MAX_DEPTH + 5) + "1" + "}" * (schema.MAX_DEPTH + 5)
                                           ).encode(),
    "lone surrogate": lambda rng: rng.choice([b'"\\ud800"', b'"x\\udfff"', b'"\\udc00\\ud800"']),
    "invalid utf-8": lambda rng: rng.choice([b'"\xff"', b'"a\xc3"', b'"\xed\xa0\x80"', b'"\x80abc"']),
    "huge int": lambda rng: b"9" * rng.choice([4301, 6000, 20000]),
    "non-finite": lambda rng: rng.choice([b"NaN", b"Infinity", b"-Infinity"]),
}


def _nodes(value, path=()):
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _nodes(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _nodes(v, path + (i,))


def _set(value, path, new):
    for p in path[:-1]:
        value = value[p]
    value[path[-1]] = new


def _delete(value, path):
    for p in path[:-1]:
        value = value[p]
    del value[path[-1]]


SWAPS = [0, 7, -1, 10**30, 1.5, "", "x", True, False, None, [], [1], {}, {"a": 1}, [{"role": "user"}],
         "function", "other", ["x"]]


def mutate(entry, rng) -> tuple[bytes, bool]:
    """(JSON line, must be rejected) for one random mutation of `entry`."""
    value = copy.deepcopy(entry)
    kind = rng.choice(["swap", "swap", "delete", "truncate", *TEXTUAL])
    paths = [p for p, _ in _nodes(value) if p]
    if kind == "swap":
        _set(value, rng.choice(paths), copy.deepcopy(rng.choice(SWAPS)))
        return json.dumps(value).encode(), False
    if kind == "delete":
        _delete(value, rng.choice(paths))
        return json.dumps(value).encode(), False
    text = json.dumps(value).encode()
    if kind == "truncate":
        return text[: rng.randrange(1, len(text) - 1)], True
    _set(value, rng.choice(paths), MARK)
    return json.dumps(value).encode().replace(f'"{MARK}"'.encode(), TEXTUAL[kind](rng)), True


class AllSkips(SkipReport):
    """A SkipReport that also keeps every location (the real one keeps a few per reason)."""

    def __init__(self):
        super().__init__()
        self.all = []

    def add(self, where, error):
        super().add(where, error)
        assert isinstance(error, schema.RecordError) and error.reason and error.detail
        self.all.append(where)


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizers.load("qwen3_5")


def assert_usable(record, tokenizer):
    """What 'accepted' promises downstream: valid, writable as UTF-8 JSON, and renders with the chat template."""
    schema.validate_record(record)
    json.dumps(record, ensure_ascii=False, allow_nan=False).encode("utf-8")
    assert len(chat.tokenize_trajectory(record, tokenizer)["tokens"]) > 0


def _jsonl_corpus(tmp_path, name, make, rng, n):
    """A JSONL file mixing valid entries and mutated ones: (path, valid line numbers, must-reject line numbers)."""
    lines, valid, bad = [], [], []
    for i in range(n):
        if i % 3 == 0:
            lines.append(json.dumps(make(i)).encode())
            valid.append(len(lines))
        else:
            line, must_reject = mutate(make(i), rng)
            lines.append(line.replace(b"\n", b" "))
            if must_reject:
                bad.append(len(lines))
    lines.append(lines[valid[0] - 1])  # a duplicated line: same id, so it must be skipped
    bad.append(len(lines))
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, valid, bad


def _check_jsonl_outcome(path, kept_lines, skips, valid, bad, n_lines):
    located = [int(w.rpartition(":")[2]) for w in skips.all]
    assert all(w.startswith(f"{path}:") for w in skips.all)
    assert set(valid) <= set(kept_lines), "a valid record was dropped"
    assert set(bad) <= set(located), "a record that must be rejected was accepted"
    assert sorted(set(located) | set(kept_lines)) == list(range(1, n_lines + 1)), "a record went unreported"
    assert not set(located) & set(kept_lines)


def test_fuzzed_schema_jsonl_through_reader_and_token_cache(tmp_path, tokenizer):
    rng = random.Random(SEED)
    path, valid, bad = _jsonl_corpus(tmp_path, "corpus.jsonl", schema_record, rng, N_PER_ENTRY_POINT)
    skips = AllSkips()
    kept = list(read_records(path, skips=skips))
    for _, record in kept:
        assert_usable(record, tokenizer)
    _check_jsonl_outcome(path, [n for n, _ in kept], skips, valid, bad, N_PER_ENTRY_POINT + 1)
    assert 0 < len(bad) and skips.total == len(skips.all) >= len(bad)

    with pytest.raises(ValueError, match=rf"^{path}:\d+: "):  # strict mode stops at the first bad record
        list(read_records(path, strict=True))

    cache = load_or_build(path, tokenizer, cache_dir=tmp_path / "cache")
    assert cache.ids == [r["id"] for _, r in kept]
    assert cache.skips.total == skips.total and cache.skips.first == [
        f"{w}: {d}" for w, d in zip(skips.all, [x.partition(": ")[2] for x in cache.skips.first])]


@pytest.mark.parametrize("fmt, make, name", [("tau_bench", tau_entry, "airline.jsonl")])
def test_fuzzed_tau_bench_jsonl_through_the_importer(tmp_path, tokenizer, fmt, make, name):
    rng = random.Random(SEED + 1)
    path, valid, bad = _jsonl_corpus(tmp_path, name, make, rng, N_PER_ENTRY_POINT)
    skips = AllSkips()
    records = list(import_records(fmt, [path], domain="d", skips=skips))
    for record in records:
        assert_usable(record, tokenizer)
    kept_lines = sorted(set(range(1, N_PER_ENTRY_POINT + 2)) - {int(w.rpartition(":")[2]) for w in skips.all})
    assert len(kept_lines) == len(records)
    _check_jsonl_outcome(path, kept_lines, skips, valid, bad, N_PER_ENTRY_POINT + 1)


@pytest.mark.parametrize("fmt, make, suffix", [("toolbench", toolbench_answer, ".json"),
                                               ("swe_agent", swe_traj, ".traj"),
                                               ("tau_bench", lambda i: [tau_entry(i)], ".json")])
def test_fuzzed_documents_through_each_importer_and_the_cli(tmp_path, tokenizer, fmt, make, suffix, capsys):
    rng = random.Random(SEED + 2)
    folder = tmp_path / "in" / "G1_answer"
    folder.mkdir(parents=True)
    valid, bad = set(), set()
    for i in range(N_PER_ENTRY_POINT):
        path = folder / f"f{i:03d}{suffix}"
        entry = make(i)
        if i % 3 == 0:
            path.write_text(json.dumps(entry))
            valid.add(path)
        else:
            text, must_reject = mutate(entry, rng)
            path.write_bytes(text)
            if must_reject:
                bad.add(path)
    skips = AllSkips()
    records = list(import_records(fmt, [folder], domain="d", skips=skips))
    for record in records:
        assert_usable(record, tokenizer)
    located = {Path(w.partition(":[")[0]) for w in skips.all}
    assert located <= set(folder.iterdir()) and len(located) == len(skips.all)
    assert bad <= located and not valid & located
    assert len(records) + len(located) == N_PER_ENTRY_POINT

    out = tmp_path / "out.jsonl"
    assert cli.main(["data", "import", "--format", fmt, str(folder), "--out", str(out), "--domain", "d"]) == 0
    assert [r for _, r in read_records(out, strict=True)] == records
    printed = capsys.readouterr().out
    assert f"skipped: {len(located)} records" in printed and "first 5 skipped:" in printed

    before = out.read_bytes()
    assert cli.main(["data", "import", "--format", fmt, str(folder), "--out", str(out), "--domain", "d",
                     "--strict"]) == 2
    assert f"a1jax data: error: {folder}" in capsys.readouterr().err
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["in", "out.jsonl"]


# ---- each class of the issue, by hand ----------------------------------------------------------------------------

def _line(record, **replace):
    """The record as a JSON line, with the first JSON string "KEY" replaced by raw text (str or bytes) for each KEY."""
    text = json.dumps(record).encode()
    for key, raw in replace.items():
        text = text.replace(f'"{key}"'.encode(), raw if isinstance(raw, bytes) else raw.encode(), 1)
    return text


BAD_LINES = [
    (_line(schema_record(0), s="[" * 100000 + "]" * 100000), schema.BAD_VALUE, "recursion limit"),
    (_line(schema_record(0), s='"\\ud83d"'), schema.BAD_VALUE, "source: string has a lone UTF-16 surrogate"),
    (_line(schema_record(0), s='"\\udc00x"'), schema.BAD_VALUE, "lone UTF-16 surrogate '\\udc00' at char 0"),
    (_line(schema_record(0), s=b'"caf\xe9"'), schema.INVALID_JSON, "not valid UTF-8 (byte 27: b'\\xe9')"),
    (_line(schema_record(0), s="1" * 5000), schema.INVALID_JSON, "digits"),
    (_line(schema_record(0), s="NaN"), schema.INVALID_JSON, "NaN is not valid JSON"),
    (_line(schema_record(0), s="-Infinity"), schema.INVALID_JSON, "-Infinity is not valid JSON"),
    (_line(schema_record(0), d="7"), schema.BAD_FIELD, "field 'domain' must be a non-empty string, got 7"),
    (_line(schema_record(0), get_x="3"), schema.BAD_TOOL_CALL, "function.name must be a non-empty string"),
    (_line({**schema_record(0), "tools": [{**TOOL, "type": "plugin"}]}), schema.BAD_TOOLS,
     "tools[0].type='plugin': expected 'function'"),
    (_line({**schema_record(0), "tools": [{"type": "function", "function": {"name": 5}}]}),
     schema.BAD_TOOLS, "tools[0].function.name=5: expected a non-empty string"),
    (_line({**schema_record(0), "tools": [{"type": "function", "function": {"name": "a", "parameters": "x"}}]}),
     schema.BAD_TOOLS, "tools[0].function.parameters: expected a JSON-schema object, got str"),
    (_line({**schema_record(0), "messages": [{"role": "user", "content": "q", "name": ["x"]}]}),
     schema.BAD_FIELD, "message 0: name=['x']: expected a non-empty string"),
    (_line({**schema_record(0), "messages": [MESSAGES[1], {**MESSAGES[2], "tool_calls": [{**CALL, "type": "x"}]},
                                             MESSAGES[3]]}),
     schema.BAD_TOOL_CALL, "message 1: tool_calls[0]: type='x': expected 'function'"),
    (_line({**schema_record(0), "messages": [MESSAGES[1], {**MESSAGES[2], "tool_calls": [
        {**CALL, "function": {"name": "f", "arguments": "{\"a\": NaN}"}}]}]}),
     schema.UNPARSEABLE_ARGUMENTS, "arguments are not valid JSON (NaN is not valid JSON"),
    (_line({**schema_record(0), "messages": [MESSAGES[1], {**MESSAGES[2], "tool_calls": [
        {**CALL, "function": {"name": "f", "arguments": "[" * 50000 + "]" * 50000}}]}]}),
     schema.UNPARSEABLE_ARGUMENTS, "recursion limit"),
    (_line(schema_record(1)), schema.DUPLICATE_ID, "id 'r1' was already used by an earlier record of this file"),
]


def test_each_bad_line_class_is_skipped_with_its_reason_and_the_rest_of_the_file_is_kept(tmp_path):
    lines = [_line(schema_record(1))]
    for line, _, _ in BAD_LINES:
        lines += [line, _line(schema_record(len(lines) + 10))]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    skips = AllSkips()
    kept = list(read_records(path, skips=skips))
    assert [n for n, _ in kept] == list(range(1, len(lines) + 1, 2))
    assert skips.all == [f"{path}:{n}" for n in range(2, len(lines) + 1, 2)]
    one = tmp_path / "one.jsonl"
    for i, (_, reason, detail) in enumerate(BAD_LINES):  # strict mode: the same line stops the run, named
        one.write_bytes(lines[0] + b"\n" + lines[2 * i + 1] + b"\n")
        with pytest.raises(ValueError) as e:
            list(read_records(one, strict=True))
        assert str(e.value).startswith(f"{one}:2: ") and detail in str(e.value), (i, str(e.value))
    reasons = [reason for _, reason, _ in BAD_LINES]
    assert dict(skips.counts) == {r: reasons.count(r) for r in set(reasons)}
    assert skips.first == [f"{path}:{2 * i + 2}: {skips_detail}" for i, skips_detail in
                           enumerate(line.partition(": ")[2] for line in skips.first)]
    assert len(skips.first) == 5


IMPORTER_CASES = [  # wrongly typed fields in every importer: (format, suffix, document, reason, detail)
    ("tau_bench", ".json", [{"task_id": 1, "traj": MESSAGES, "info": ["x"]}], None, None),
    ("tau_bench", ".json", [{"task_id": [1], "traj": MESSAGES}], schema.UNSUPPORTED_RECORD,
     "'task_id' must be an integer or a string, got list"),
    ("tau_bench", ".json", [{"task_id": 1, "traj": ["user: hi"]}], schema.BAD_FIELD,
     "message 0: a message must be an object, got str"),
    ("tau_bench", ".json", [{"task_id": 1, "traj": [MESSAGES[1], {**MESSAGES[2], "tool_calls": [
        {**CALL, "function": {"name": None, "arguments": "{}"}}]}]}], schema.BAD_TOOL_CALL, "function.name"),
    ("toolbench", ".json", {"answer_generation": {"train_messages": [["hi"]]}}, schema.UNSUPPORTED_RECORD,
     "message 0: expected an object, got str"),
    ("toolbench", ".json", {"answer_generation": {"train_messages": "hi"}}, schema.UNSUPPORTED_RECORD,
     "train_messages must be a list of conversations"),
    ("toolbench", ".json", {"answer_generation": {"train_messages": [[{"role": "assistant", "function_call": "f"}]]}},
     schema.UNSUPPORTED_RECORD, "message 0: function_call must be an object with a string 'name'"),
    ("toolbench", ".json", {"answer_generation": {"function": "f", "train_messages": [[MESSAGES[1]]]}},
     schema.UNSUPPORTED_RECORD, "answer_generation.function must be a list of function schemas"),
    ("toolbench", ".json", {"answer_generation": {"function": [{"name": 3}], "train_messages": [[MESSAGES[1]]]}},
     schema.BAD_TOOLS, "tools[0].function.name=3: expected a non-empty string"),
    ("swe_agent", ".traj", {"history": [1, 2]}, schema.UNSUPPORTED_RECORD,
     "history[0]: expected a message object, got int"),
    ("swe_agent", ".traj", {"history": [MESSAGES[1], MESSAGES[2], {"role": "tool", "tool_call_ids": "c1"}]},
     schema.UNSUPPORTED_RECORD, "message 2: tool_call_ids must be a list, got str"),
    ("swe_agent", ".traj", {"history": [MESSAGES[1], {"role": "assistant", "tool_calls": {"id": 1}}]},
     schema.UNSUPPORTED_RECORD, "message 1: tool_calls must be a list of objects"),
    ("swe_agent", ".traj", {"history": [MESSAGES[1]], "info": "x"}, None, None),
]


@pytest.mark.parametrize("fmt, suffix, document, reason, detail", IMPORTER_CASES)
def test_wrongly_typed_importer_fields_are_reported_not_raised(tmp_path, fmt, suffix, document, reason, detail):
    path = tmp_path / f"doc{suffix}"
    path.write_text(json.dumps(document))
    skips = AllSkips()
    records = list(import_records(fmt, [path], domain="d", skips=skips))
    if reason is None:  # a field the conversion does not need: ignored, the record is valid
        assert len(records) == 1 and skips.total == 0
        return
    assert records == [] and list(skips.counts) == [reason]
    assert skips.all[0].startswith(str(path)) and detail in skips.first[0], skips.first


def test_duplicate_ids_across_an_import_are_skipped(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "x.traj").write_text(json.dumps(swe_traj(0)))
    skips = AllSkips()
    records = list(import_records("swe_agent", [tmp_path / "a", tmp_path / "b"], domain="d", skips=skips))
    assert [r["id"] for r in records] == ["swe_agent/x"]
    assert skips.first == [f"{tmp_path / 'b' / 'x.traj'}: id 'swe_agent/x' was already used by an earlier record "
                           f"of this import"]


def test_write_records_is_atomic(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")

    def failing():
        yield schema_record(0)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        write_records(out, failing())
    assert out.read_text() == "old\n" and os.listdir(tmp_path) == ["out.jsonl"]
    assert write_records(out, [schema_record(0)]) == 1 and len(out.read_text().splitlines()) == 1


def test_token_cache_reports_the_path_it_was_asked_for(tmp_path, tokenizer):
    """Two files with the same name and bytes share a cache entry; each one's skips name its own path."""
    content = b"\n".join([_line(schema_record(0)), b"{not json"]) + b"\n"
    paths = [tmp_path / d / "train.jsonl" for d in ("x", "y")]
    for p in paths:
        p.parent.mkdir()
        p.write_bytes(content)
    for p in paths:
        entry = load_or_build(p, tokenizer, cache_dir=tmp_path / "cache")
        assert entry.skips.first == [f"{p}:2: not valid JSON (Expecting property name enclosed in double quotes "
                                     f"at char 1)"]
        assert entry.skips.examples[schema.INVALID_JSON] == entry.skips.first
    assert len(os.listdir(tmp_path / "cache")) == 1


def test_pipeline_logs_the_first_skipped_locations(tmp_path, tokenizer, caplog):
    from a1jax.data.pipeline import PipelineConfig, Source, load_sources
    path = tmp_path / "t.jsonl"
    lines = [_line(schema_record(0))] + [b"[%d" % i for i in range(8)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level("WARNING", logger="a1jax.data"):
        load_sources(PipelineConfig(sources=(Source((str(path),)),), cache_dir=str(tmp_path / "cache")))
    text = caplog.text
    assert "skipped 8 records" in text
    assert all(f"{path}:{n}: not valid JSON" in text for n in range(2, 7)) and f"{path}:7:" not in text


@pytest.mark.parametrize("name", ["qwen3_5", "mistral_v3"])
def test_vocab_size_read_from_the_files_matches_the_built_tokenizer(tokenizer, name):
    built = tokenizer if name == "qwen3_5" else tokenizers.load(name)
    assert tokenizers.vocab_size(name) == built.vocab_size
