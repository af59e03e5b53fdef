"""A compact vocabulary derived from a byte-level BPE tokenizer, for tiny models whose cost the full vocabulary would
dominate (the tiny recipe: Qwen3.5's 248,320 rows against a hidden size of 128).

The compact vocabulary keeps a subset of the base tokenizer's ids: its 256 single-byte tokens, all its special
tokens, and the N most frequent tokens of a corpus. Text is encoded by the unchanged base tokenizer; every kept id is
renumbered, and any other token is re-encoded as the byte tokens of its bytes. So the encoding is lossless (decode
gives the text back exactly), the chat template and its loss masks are unchanged (a byte token covers the
characters of the token it came from), and a model trained on it can still be read by the base tokenizer through
`to_base`. Full-size experiments keep the full vocabulary.

    python -m a1jax.data.tokenizers.build_compact --size 4096 \
        --out a1jax/assets/tokenizers/qwen3_5_compact/compact.json

(a1jax/data/tokenizers/build_compact.py) builds the shipped `qwen3_5_compact` list from the recipe's corpus (the six domains' expert demonstrations and the
trajectories in data/quickstart).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from a1jax.data.tokenizers.base import Tokenizer

FORMAT = "a1jax-compact-vocab-1"


class CompactTokenizer(Tokenizer):
    """`base` restricted to the ids `kept` (ascending base ids; compact id i stands for base id kept[i])."""

    def __init__(self, base: Tokenizer, kept: Sequence[int], *, name: str):
        kept = np.asarray(sorted(set(int(i) for i in kept)), np.int64)
        if kept.size and not (0 <= kept[0] and kept[-1] < base.vocab_size):
            raise ValueError(f"compact vocabulary {name!r}: ids must lie in [0, {base.vocab_size}) of {base.name}")
        self.base = base
        self.kept = kept
        self._to_compact = np.full(base.vocab_size, -1, np.int64)
        self._to_compact[kept] = np.arange(kept.size)
        single = byte_token_ids(base)
        missing_bytes = [b for b in range(256) if bytes([b]) not in single or self._to_compact[single[bytes([b])]] < 0]
        if missing_bytes:
            raise ValueError(f"compact vocabulary {name!r} lacks the byte token(s) {missing_bytes[:8]} of {base.name}: "
                             f"every byte must be kept, or some text could not be encoded")
        self._byte = np.asarray([self._to_compact[single[bytes([b])]] for b in range(256)], np.int64)
        lost = sorted(s for s, i in base.special_tokens.items() if self._to_compact[i] < 0)
        if lost:
            raise ValueError(f"compact vocabulary {name!r} lacks special token(s) {lost[:5]} of {base.name}")
        self.name = name
        self.vocab_size = int(kept.size)
        self.fingerprint = hashlib.sha256((base.fingerprint + FORMAT).encode() + kept.tobytes()).hexdigest()
        self.special_tokens = {s: int(self._to_compact[i]) for s, i in base.special_tokens.items()}
        self.stop_ids = tuple(int(self._to_compact[i]) for i in base.stop_ids)
        self.pad_id = int(self._to_compact[base.pad_id])
        self.bos_id = None if base.bos_id is None else int(self._to_compact[base.bos_id])

    def _map(self, ids: np.ndarray, offsets: np.ndarray | None):
        out = self._to_compact[ids]
        missing = np.flatnonzero(out < 0)
        if not missing.size:
            return out.astype(np.int32), offsets
        spelled = [self._byte[list(self.base.token_bytes(int(ids[j])))] for j in missing]
        lengths = np.ones(len(ids), np.int64)
        lengths[missing] = [len(b) for b in spelled]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        new_ids = np.empty(int(lengths.sum()), np.int64)
        kept = out >= 0
        new_ids[starts[kept]] = out[kept]
        for j, b in zip(missing, spelled):
            new_ids[starts[j]:starts[j] + len(b)] = b
        # a byte token covers the characters of the token it came from
        new_off = None if offsets is None else np.repeat(np.asarray(offsets), lengths, axis=0).astype(np.int32)
        return new_ids.astype(np.int32), new_off

    def encode(self, text: str) -> list[int]:
        return self._map(np.asarray(self.base.encode(text), np.int64), None)[0].tolist()

    def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        ids, offsets = self.base.encode_with_offsets(text)
        return self._map(np.asarray(ids, np.int64), offsets)

    def to_base(self, ids: Sequence[int]) -> np.ndarray:
        """Base-tokenizer ids of compact ids (the base may split them differently; the bytes are the same)."""
        ids = np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token id out of range for {self.name} (vocab_size={self.vocab_size})")
        return self.kept[ids]

    def decode(self, ids: Sequence[int]) -> str:
        return self.base.decode(self.to_base(ids).tolist())

    def _piece_bytes(self, token_id: int) -> bytes:
        return self.base.token_bytes(int(self.kept[token_id]))


def load_compact(path: Path, base_loader) -> CompactTokenizer:
    """A compact vocabulary file (`compact.json`: format, base tokenizer name, base fingerprint, kept ids)."""
    spec = json.loads(Path(path).read_text())
    if spec.get("format") != FORMAT:
        raise ValueError(f"{path}: not a compact vocabulary file (format {spec.get('format')!r}, expected {FORMAT!r})")
    base = base_loader(spec["base"])
    if spec["base_fingerprint"] != base.fingerprint:
        raise ValueError(f"{path}: built for another {spec['base']} tokenizer (fingerprint "
                         f"{spec['base_fingerprint'][:12]}, the installed one is {base.fingerprint[:12]})")
    return CompactTokenizer(base, spec["ids"], name=spec["name"])


def byte_token_ids(base: Tokenizer) -> dict[bytes, int]:
    """The base tokenizer's single-byte tokens: byte string -> id."""
    table = base.token_bytes_table
    return {table[i]: i for i in range(base.vocab_size) if len(table[i]) == 1 and not base.is_special(i)}
