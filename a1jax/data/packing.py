"""Fitting tokenized trajectories into rows of `seq_len` tokens and packing rows into `[B, T]` batches.

An *example* is a dict of per-token arrays `tokens` (int32), `loss_mask` (0/1, unshifted: token t is trained when it
is a target), `turn_ids` (int32) plus an int `domain_id`, as the token cache yields them.

Overlong examples (longer than `seq_len`) follow a policy:
- "drop": skip the example;
- "split": cut it into consecutive pieces, each as many whole turns as fit, cutting only where a ChatML turn begins.
  No cut ever falls inside a turn, so never inside a supervised assistant turn; each piece starts with a turn's
  `<|im_start|>`, which is never supervised, so no supervised target is lost. An example holding a single turn longer
  than `seq_len` cannot be split that way and is dropped.
The outcome of every example is counted (`OUTCOMES`).

Packing is first-fit or best-fit over the rows of one batch: a piece goes into the first row (first_fit) or the
fullest row (best_fit) with room for it; when none has room the batch is complete and the piece opens the next one.
"single" puts one piece per row (long-horizon runs: one 45K-262K trajectory per row, the rest padding).
See `a1jax.data.pipeline` for the batch layout (targets, shifted mask, segments, positions).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

OVERLONG_POLICIES = ("drop", "split")
PACKING_ALGORITHMS = ("first_fit", "best_fit", "single")
# Outcome of one example against seq_len; the pipeline counts these.
FITS, SPLIT, DROPPED_OVERLONG, DROPPED_OVERLONG_TURN = "fits", "split", "dropped_overlong", "dropped_overlong_turn"
OUTCOMES = (FITS, SPLIT, DROPPED_OVERLONG, DROPPED_OVERLONG_TURN)
BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions", "domain_ids")
_PER_TOKEN = ("tokens", "loss_mask", "turn_ids")


def turn_starts(turn_ids: np.ndarray) -> np.ndarray:
    """Token indices where a new ChatML turn begins (always includes 0 for a non-empty example)."""
    if len(turn_ids) == 0:
        return np.zeros(0, np.int64)
    return np.concatenate([[0], np.flatnonzero(np.diff(turn_ids)) + 1])


def _slice(example: dict, start: int, end: int) -> dict:
    piece = {k: example[k][start:end] for k in _PER_TOKEN}
    piece["domain_id"] = example["domain_id"]
    return piece


def fit_to_length(example: dict, seq_len: int, policy: str) -> tuple[list[dict], str]:
    """(pieces, outcome): the example itself if it fits, else what the overlong `policy` makes of it."""
    n = len(example["tokens"])
    if n <= seq_len:
        return [example], FITS
    if policy == "drop":
        return [], DROPPED_OVERLONG
    if policy != "split":
        raise ValueError(f"overlong policy {policy!r}: expected one of {', '.join(OVERLONG_POLICIES)}")
    bounds = np.append(turn_starts(example["turn_ids"]), n)
    if np.diff(bounds).max() > seq_len:
        return [], DROPPED_OVERLONG_TURN
    pieces, start = [], 0
    for k in range(1, len(bounds)):  # greedy: extend the piece turn by turn while it fits
        if bounds[k] - start > seq_len:
            pieces.append(_slice(example, start, int(bounds[k - 1])))
            start = int(bounds[k - 1])
    pieces.append(_slice(example, start, n))
    return pieces, SPLIT


class RowPacker:
    """Places pieces into `num_rows` rows of `seq_len` tokens (one batch)."""

    def __init__(self, num_rows: int, seq_len: int, algorithm: str = "first_fit"):
        if algorithm not in PACKING_ALGORITHMS:
            raise ValueError(f"packing {algorithm!r}: expected one of {', '.join(PACKING_ALGORITHMS)}")
        self.seq_len = seq_len
        self.algorithm = algorithm
        self.rows: list[list[dict]] = [[] for _ in range(num_rows)]
        self.free = np.full(num_rows, seq_len, np.int64)

    @property
    def empty(self) -> bool:
        return not any(self.rows)

    def try_add(self, piece: dict) -> bool:
        """Put `piece` in a row with room for it; False if no row has room."""
        n = len(piece["tokens"])
        if n > self.seq_len:
            raise ValueError(f"a piece of {n} tokens can never fit rows of seq_len={self.seq_len}")
        room = self.free == self.seq_len if self.algorithm == "single" else self.free >= n
        candidates = np.flatnonzero(room)
        if candidates.size == 0:
            return False
        row = candidates[0] if self.algorithm == "first_fit" else candidates[np.argmin(self.free[candidates])]
        self.rows[row].append(piece)
        self.free[row] -= n
        return True

    def batch(self, pad_id: int = 0) -> dict[str, np.ndarray]:
        return make_batch(self.rows, self.seq_len, pad_id)


def make_batch(rows: Sequence[Sequence[dict]], seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Lay out rows of pieces as the `[B, T]` arrays described in `a1jax.data.pipeline`."""
    shape = (len(rows), seq_len)
    tokens = np.full(shape, pad_id, np.int32)
    targets = np.full(shape, pad_id, np.int32)
    loss_mask = np.zeros(shape, np.float32)
    segment_ids = np.zeros(shape, np.int32)
    positions = np.zeros(shape, np.int32)
    domain_ids = np.zeros(shape, np.int32)
    for b, pieces in enumerate(rows):
        pos = 0
        for segment, piece in enumerate(pieces, 1):
            ids = piece["tokens"]
            n = len(ids)
            if pos + n > seq_len:
                raise ValueError(f"row {b} overflows seq_len={seq_len}")
            tokens[b, pos:pos + n] = ids
            # targets[t] = the next token of the same segment; the segment's last token has no target.
            targets[b, pos:pos + n - 1] = ids[1:]
            loss_mask[b, pos:pos + n - 1] = piece["loss_mask"][1:]
            segment_ids[b, pos:pos + n] = segment
            positions[b, pos:pos + n] = np.arange(n, dtype=np.int32)
            domain_ids[b, pos:pos + n] = piece["domain_id"]
            pos += n
    return {"tokens": tokens, "targets": targets, "loss_mask": loss_mask, "segment_ids": segment_ids,
            "positions": positions, "domain_ids": domain_ids}


def unpack(batch: dict[str, np.ndarray]) -> list[dict]:
    """The segments of a batch, row by row, as {tokens, loss_mask (unshifted, uint8), domain_id}.

    Inverse of `make_batch` for pieces whose first token is unsupervised (every rendered turn starts with an
    unsupervised `<|im_start|>`): the first token is never a target, so its mask bit is not stored in the batch.
    """
    out = []
    for b in range(batch["tokens"].shape[0]):
        segments = batch["segment_ids"][b]
        for segment in range(1, int(segments.max(initial=0)) + 1):
            where = np.flatnonzero(segments == segment)
            if where.size == 0:
                continue
            mask = np.concatenate([[0], batch["loss_mask"][b, where[:-1]]]).astype(np.uint8)
            out.append({"tokens": batch["tokens"][b, where], "loss_mask": mask,
                        "domain_id": int(batch["domain_ids"][b, where[0]])})
    return out
