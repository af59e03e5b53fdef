"""The compact Qwen3.5 vocabulary of the tiny recipe: lossless on every shipped trajectory, the same chat template and
loss masks, ids in range, and checkpoints that record their vocabulary and refuse another one."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from a1jax.data import tokenizers
from a1jax.data.chat import tokenize_trajectory
from a1jax.data.records import read_records
from a1jax.data.tokenizers.compact import CompactTokenizer
from a1jax.distill import rollouts as R
from a1jax.envs import registry
from a1jax.train import vocabulary

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toks():
    return tokenizers.load("qwen3_5"), tokenizers.load("qwen3_5_compact")


def shipped_records():
    for f in sorted((REPO / "data" / "quickstart").glob("*.jsonl")):
        for _, record in read_records(f):
            yield f.name, record
    for d in registry.names():  # a few expert demonstrations of every domain and horizon the recipe uses
        env = registry.get(d)
        for h in (1, 2):
            try:
                tasks = R.draw_tasks(env, d, n=3, horizons=[h], seed=5)
            except ValueError:
                continue
            for t in tasks:
                yield d, env.solve(t)


def test_compact_vocabulary_is_small_and_keeps_every_byte_and_special_token(toks):
    full, compact = toks
    assert compact.vocab_size == 4096 < full.vocab_size
    assert set(compact.special_tokens) == set(full.special_tokens)
    assert compact.decode([compact.pad_id]) == full.decode([full.pad_id])
    assert [compact.decode([i]) for i in compact.stop_ids] == [full.decode([i]) for i in full.stop_ids]
    assert sorted(compact.token_bytes(i) for i in range(compact.vocab_size) if len(compact.token_bytes(i)) == 1
                  and not compact.is_special(i)) == [bytes([b]) for b in range(256)]


def test_round_trip_and_loss_masks_match_the_full_vocabulary_on_all_shipped_data(toks):
    full, compact = toks
    n = spelled = 0
    for where, record in shipped_records():
        a, b = tokenize_trajectory(record, full), tokenize_trajectory(record, compact)
        ids = np.asarray(b["tokens"])
        assert ids.min() >= 0 and ids.max() < compact.vocab_size, where
        text = full.decode(a["tokens"])
        assert compact.decode(b["tokens"]) == text, where  # lossless: the same rendered chat template
        for mask_a, mask_b in ((a["loss_mask"], b["loss_mask"]),):
            sup_a = full.decode([t for t, m in zip(a["tokens"], mask_a) if m])
            sup_b = compact.decode([t for t, m in zip(b["tokens"], mask_b) if m])
            assert sup_a == sup_b, where  # the same supervised text
        spelled += len(b["tokens"]) - len(a["tokens"])
        n += 1
    assert n > 100
    assert spelled >= 0  # bytes never make a text shorter


def test_a_token_outside_the_compact_vocabulary_is_spelled_in_bytes_with_its_characters_offsets(toks):
    full, _ = toks
    kept = sorted({i for i in range(full.vocab_size) if len(full.token_bytes(i)) == 1 and not full.is_special(i)}
                  | set(full.special_tokens.values()))
    bytes_only = CompactTokenizer(full, kept, name="bytes_only")
    text = "héllo, 世界 <|im_start|>"
    ids, offsets = bytes_only.encode_with_offsets(text)
    assert bytes_only.decode(ids.tolist()) == text
    assert len(ids) == len(text.encode()) - len("<|im_start|>") + 1  # one id per byte, one for the special token
    assert offsets.shape == (len(ids), 2) and (offsets[:, 0] <= offsets[:, 1]).all()
    with pytest.raises(ValueError, match="byte token"):
        CompactTokenizer(full, kept[1:], name="no_byte_0")


def test_a_workdir_records_its_vocabulary_and_refuses_another(tmp_path, toks):
    full, compact = toks
    run = tmp_path / "sft"
    run.mkdir()
    vocabulary.guard(str(run), "", "qwen3_5_compact")
    got = json.loads((run / vocabulary.FILE).read_text())
    assert got == {"tokenizer": "qwen3_5_compact", "vocab_size": 4096, "fingerprint": compact.fingerprint}
    vocabulary.guard(str(run), "", "qwen3_5_compact")  # resuming with the same vocabulary is fine
    with pytest.raises(ValueError, match="trained with vocabulary 'qwen3_5_compact'.*uses 'qwen3_5'"):
        vocabulary.guard(str(run), "", "qwen3_5")  # resume
    with pytest.raises(ValueError, match=f"init_from {run}: trained with vocabulary 'qwen3_5_compact'"):
        vocabulary.guard(str(tmp_path / "teacher"), str(run), "qwen3_5")  # start from it
    with pytest.raises(ValueError, match="teacher of search"):
        vocabulary.check(str(run), full, "teacher of search")
    old = tmp_path / "old"  # a workdir from before vocabularies were recorded: its config names the tokenizer
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"data": {"tokenizer": "qwen3_5"}}))
    vocabulary.check(str(old), full, "init_from")
    with pytest.raises(ValueError, match="trained with vocabulary 'qwen3_5'"):
        vocabulary.check(str(old), compact, "init_from")
    assert not os.path.exists(tmp_path / "teacher" / vocabulary.FILE)
