"""The one `Tokenizer` interface every a1jax data path uses, whatever library sits underneath.

Three things downstream code needs beyond encode/decode:
- character offsets, so loss masks come from character spans of one rendered string (`chat.tokenize_trajectory`);
- per-token byte strings and a special-token flag, so teacher and student vocabularies can be aligned byte by byte
  (`recipe.md` §3.2 (a));
- a fingerprint of the files the tokenizer was built from, so token caches are invalidated when it changes.
"""
from __future__ import annotations

import abc
import functools
import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np


def fingerprint_files(paths: Sequence[Path], *, builder: str) -> str:
    """sha256 over the builder's name/version and the bytes of every file it reads."""
    h = hashlib.sha256(builder.encode())
    for path in sorted(paths, key=lambda p: p.name):
        h.update(path.name.encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


class Tokenizer(abc.ABC):
    """encode/decode, character offsets, per-token bytes and special-token ids.

    Attributes set by every implementation:
      name: short name ("qwen3_5", "qwen3", "mistral_v3", or the folder name for a path).
      fingerprint: sha256 of the source files and builder version; keys token caches.
      vocab_size: number of token ids (base vocabulary plus added tokens); every id is < vocab_size.
      special_tokens: added / control token string -> id (`<|im_start|>`, `<think>`, `<s>`, ...).
      stop_ids: ids that end generation (Qwen3.5: `<|im_end|>` and `<|endoftext|>`).
      pad_id: the id used for padding.
      bos_id: id prepended by models that use one (Mistral), else None; `encode` never adds it.
    """

    name: str
    fingerprint: str
    vocab_size: int
    special_tokens: dict[str, int]
    stop_ids: tuple[int, ...]
    pad_id: int
    bos_id: int | None

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in the text become their ids; no BOS/EOS is added."""

    @abc.abstractmethod
    def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32[N], offsets int32[N, 2]): token i covers the characters text[offsets[i,0]:offsets[i,1]].

        A token that holds part of a multi-byte character covers that whole character, so two neighbouring tokens
        can share a character; spans never run backwards.
        """

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens included verbatim."""

    @abc.abstractmethod
    def _piece_bytes(self, token_id: int) -> bytes:
        """Bytes of one token as it appears in text (special tokens: their literal string, UTF-8)."""

    def token_bytes(self, token_id: int) -> bytes:
        """The byte string token `token_id` stands for (special tokens: their literal text; check `is_special`)."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} out of range for {self.name} (vocab_size={self.vocab_size})")
        return self._piece_bytes(token_id)

    @functools.cached_property
    def token_bytes_table(self) -> list[bytes]:
        """`token_bytes(i)` for every id, built once: the input of byte-level vocabulary alignment."""
        return [self._piece_bytes(i) for i in range(self.vocab_size)]

    @functools.cached_property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self.special_tokens.values())

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_ids

    def token_id(self, token: str) -> int:
        """Id of a special token by its text, e.g. `token_id("<|im_end|>")`."""
        try:
            return self.special_tokens[token]
        except KeyError:
            raise ValueError(f"{self.name} has no special token {token!r}") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"
