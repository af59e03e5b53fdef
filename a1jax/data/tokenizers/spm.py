"""SentencePiece tokenizers (Mistral v3: a teacher with a different vocabulary, `recipe.md` §3).

The HF `tokenizers` library cannot read `.model` files, so this wraps `sentencepiece` directly. Two behaviours differ
from the byte-level BPE tokenizers and matter for cross-tokenizer alignment:
- control-token text such as "[INST]" or "<s>" in the input is ordinary text (mistral-common inserts control ids
  structurally, never by parsing), so `encode` never produces control ids;
- the model adds a dummy-prefix "▁" to the first piece, so `token_bytes` of the first token can start with a space
  that is not in the text; its offsets still point into the text.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import sentencepiece

from a1jax.data.tokenizers.base import Tokenizer, fingerprint_files

_BUILDER_VERSION = "a1jax-spm-1"


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_path: Path, *, name: str):
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
        sp = self._sp
        self.name = name
        self.fingerprint = fingerprint_files([model_path], builder=_BUILDER_VERSION)
        self.vocab_size = sp.get_piece_size()
        self.special_tokens = {sp.id_to_piece(i): i for i in range(self.vocab_size)
                               if sp.is_control(i) or sp.is_unknown(i)}
        self.stop_ids = (sp.eos_id(),)
        # SentencePiece models often have no pad piece (pad_id() == -1); pad with EOS, as HF does for Mistral.
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else sp.eos_id()
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        pieces = self._sp.encode(text, return_type="proto").pieces
        ids = np.fromiter((p.id for p in pieces), np.int32, len(pieces))
        # SentencePiece reports byte offsets into the UTF-8 text; map them to character offsets.
        byte_lengths = np.fromiter((len(c.encode()) for c in text), np.int64, len(text))
        char_of_byte = np.append(np.repeat(np.arange(len(text), dtype=np.int32), byte_lengths), len(text))
        offsets = np.zeros((len(pieces), 2), np.int32)
        for i, p in enumerate(pieces):
            begin, end = p.begin, p.end
            if end == begin and self._sp.is_byte(p.id) and begin < len(char_of_byte) - 1:
                end = begin + 1  # leading byte-fallback pieces of a character get an empty surface
            offsets[i, 0] = char_of_byte[begin]
            offsets[i, 1] = char_of_byte[end - 1] + 1 if end > begin else char_of_byte[begin]
        return ids, offsets

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; control tokens are written out literally (sentencepiece itself would drop them)."""
        out, run = [], []
        for i in map(int, ids):
            if i in self.special_ids:
                out.append(self._sp.decode(run))
                out.append(self._sp.id_to_piece(i))
                run = []
            else:
                run.append(i)
        out.append(self._sp.decode(run))
        return "".join(out)

    def _piece_bytes(self, token_id: int) -> bytes:
        sp = self._sp
        piece = sp.id_to_piece(token_id)
        if sp.is_byte(token_id):  # byte-fallback piece "<0xNN>"
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode()


def build_sentencepiece(model_path: Path, *, name: str | None = None) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(model_path, name=name or model_path.parent.name)
