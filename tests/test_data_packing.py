"""Packing is lossless, overlong trajectories split only at turn boundaries, and 262,144-token rows work."""
import collections

import numpy as np
import pytest

from a1jax.data import packing


def _example(rng, lengths, domain_id=0):
    """Turns of the given lengths; odd turns are 'assistant' turns supervised after their first (header) token."""
    turn_ids = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    mask = np.zeros(sum(lengths), np.uint8)
    for t, start in enumerate(np.cumsum([0] + list(lengths[:-1]))):
        if t % 2:
            mask[start + 1:start + lengths[t]] = 1
    return {"tokens": rng.integers(1, 1000, sum(lengths), dtype=np.int32), "loss_mask": mask,
            "turn_ids": turn_ids, "domain_id": domain_id}


def _pack_all(pieces, batch_size, seq_len, algorithm):
    batches, packer = [], packing.RowPacker(batch_size, seq_len, algorithm)
    for piece in pieces:
        if not packer.try_add(piece):
            batches.append(packer.batch())
            packer = packing.RowPacker(batch_size, seq_len, algorithm)
            assert packer.try_add(piece)
    batches.append(packer.batch())
    return batches


def _key(example):
    return example["tokens"].tobytes(), example["loss_mask"].astype(np.uint8).tobytes(), example["domain_id"]


def test_batch_layout_shifts_targets_and_mask_within_segments():
    a = {"tokens": np.array([5, 6, 7], np.int32), "loss_mask": np.array([0, 1, 1], np.uint8), "domain_id": 2}
    b = {"tokens": np.array([8, 9], np.int32), "loss_mask": np.array([0, 1], np.uint8), "domain_id": 1}
    batch = packing.make_batch([[a, b], []], seq_len=6, pad_id=99)
    np.testing.assert_array_equal(batch["tokens"], [[5, 6, 7, 8, 9, 99], [99] * 6])
    np.testing.assert_array_equal(batch["targets"], [[6, 7, 99, 9, 99, 99], [99] * 6])
    np.testing.assert_array_equal(batch["loss_mask"], [[1, 1, 0, 1, 0, 0], [0] * 6])
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 2, 2, 0], [0] * 6])
    np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 0, 1, 0], [0] * 6])
    np.testing.assert_array_equal(batch["domain_ids"], [[2, 2, 2, 1, 1, 0], [0] * 6])
    assert {k: v.dtype for k, v in batch.items()} == {
        "tokens": np.int32, "targets": np.int32, "loss_mask": np.float32, "segment_ids": np.int32,
        "positions": np.int32, "domain_ids": np.int32}


@pytest.mark.parametrize("algorithm", packing.PACKING_ALGORITHMS)
def test_packing_is_lossless(algorithm):
    rng = np.random.default_rng(0)
    examples = [_example(rng, rng.integers(2, 60, rng.integers(1, 8)).tolist(), domain_id=int(rng.integers(3)))
                for _ in range(300)]
    examples = [e for e in examples if len(e["tokens"]) <= 256]
    batches = _pack_all(examples, batch_size=4, seq_len=256, algorithm=algorithm)
    unpacked = [s for batch in batches for s in packing.unpack(batch)]
    assert collections.Counter(map(_key, unpacked)) == collections.Counter(map(_key, examples))
    for batch in batches:  # segments are contiguous from the row start, padding only at the end
        used = batch["segment_ids"] > 0
        assert (np.diff(used.astype(int), axis=1) <= 0).all()
    if algorithm != "single":
        assert np.mean([(b["segment_ids"] > 0).mean() for b in batches]) > 0.8


def test_first_fit_takes_the_first_row_with_room_and_best_fit_the_fullest():
    rng = np.random.default_rng(1)
    for algorithm, expected_row in (("first_fit", 0), ("best_fit", 1)):
        packer = packing.RowPacker(2, 10, algorithm)
        packer.free[:] = [9, 4]  # row 0 has 9 tokens of room, row 1 has 4
        assert packer.try_add(_example(rng, [3]))
        assert [len(r) for r in packer.rows] == [1 - expected_row, expected_row]
        assert not packer.try_add(_example(rng, [10]))  # no row has room: the batch is complete


def test_single_packing_puts_one_trajectory_per_row():
    rng = np.random.default_rng(5)
    examples = [_example(rng, [20, 30]) for _ in range(7)]
    batches = _pack_all(examples, batch_size=3, seq_len=1000, algorithm="single")
    assert len(batches) == 3 and all(b["segment_ids"].max(axis=1).tolist() in ([1, 1, 1], [1, 0, 0]) for b in batches)
    assert [s["tokens"].tolist() for b in batches for s in packing.unpack(b)] == [e["tokens"].tolist() for e in examples]


def test_split_cuts_only_at_turn_starts_and_loses_no_supervised_target():
    rng = np.random.default_rng(2)
    example = _example(rng, [30, 50, 20, 70, 10, 40, 25])
    pieces, outcome = packing.fit_to_length(example, seq_len=100, policy="split")
    assert outcome == packing.SPLIT and len(pieces) > 1
    assert all(len(p["tokens"]) <= 100 for p in pieces)
    starts = set(packing.turn_starts(example["turn_ids"]).tolist())
    cut = 0
    for piece in pieces:
        assert cut in starts and piece["loss_mask"][0] == 0  # a piece opens with an unsupervised turn header
        cut += len(piece["tokens"])
    for name in ("tokens", "loss_mask", "turn_ids"):
        np.testing.assert_array_equal(np.concatenate([p[name] for p in pieces]), example[name])
    batches = _pack_all(pieces, batch_size=1, seq_len=100, algorithm="first_fit")
    targets_trained = sum(int(b["loss_mask"].sum()) for b in batches)
    assert targets_trained == int(example["loss_mask"].sum())


def test_overlong_outcomes():
    rng = np.random.default_rng(3)
    short, long_turns, one_huge_turn = _example(rng, [40, 40]), _example(rng, [60, 60]), _example(rng, [10, 150, 10])
    assert packing.fit_to_length(short, 100, "drop") == ([short], packing.FITS)
    assert packing.fit_to_length(long_turns, 100, "drop") == ([], packing.DROPPED_OVERLONG)
    assert packing.fit_to_length(one_huge_turn, 100, "split") == ([], packing.DROPPED_OVERLONG_TURN)
    with pytest.raises(ValueError, match="overlong policy 'truncate': expected one of drop, split"):
        packing.fit_to_length(long_turns, 100, "truncate")


def test_rows_of_262144_tokens_pack_and_unpack():
    seq_len = 262_144
    rng = np.random.default_rng(4)
    long_example = _example(rng, [4_000] + [16_000, 30_000] * 10)  # 464,000 tokens: split into two pieces
    exact = _example(rng, [2_144, 260_000], domain_id=1)  # exactly seq_len: fits one row
    pieces, outcome = packing.fit_to_length(long_example, seq_len, "split")
    assert outcome == packing.SPLIT and len(pieces) == 2
    batches = _pack_all(pieces + [exact], batch_size=1, seq_len=seq_len, algorithm="first_fit")
    assert len(batches) == 3 and all(b["tokens"].shape == (1, seq_len) for b in batches)
    assert (batches[2]["segment_ids"] == 1).all() and batches[2]["positions"][0, -1] == seq_len - 1
    unpacked = [s for b in batches for s in packing.unpack(b)]
    assert list(map(_key, unpacked)) == list(map(_key, pieces + [exact]))
