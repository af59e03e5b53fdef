"""Tokenizers: `load("qwen3_5" | "qwen3_5_compact" | "qwen3" | "mistral_v3" | PATH) -> Tokenizer`.

The named tokenizers are built from files shipped inside the package (`a1jax/assets/tokenizers/<name>/`, each with
its PROVENANCE.md), so nothing outside the installed package is read at run time. A PATH is a folder (or file) in
one of the shipped layouts:

  one *.tiktoken + special_tokens.json       Qwen3.5-style tiktoken ranks (built as HF BPE, ignore_merges=True)
  vocab.json + merges.txt + tokenizer_config.json   Qwen2/Qwen3-style byte-level BPE
  tokenizer.json                             any byte-level BPE HF tokenizer
  *.model / *.model.v*                       SentencePiece (Mistral)
  compact.json                               a compact vocabulary over another tokenizer (compact.py)

"qwen3_5_compact" is Qwen3.5 restricted to 4,096 ids (its bytes, its special tokens and the recipe corpus's most
frequent tokens; anything else is spelled in bytes): the tiny recipe's vocabulary (tokenizers/compact.py).

Building Qwen3.5 takes ~3 s (its 500k merges are derived from the ranks), so tokenizers are cached per process.
"""
from __future__ import annotations

import functools
import importlib.resources
import json
from pathlib import Path

from a1jax.data.tokenizers.base import Tokenizer
from a1jax.data.tokenizers.bpe import build_from_tokenizer_json, build_qwen2_style, build_tiktoken_ranks
from a1jax.data.tokenizers.compact import load_compact
from a1jax.data.tokenizers.spm import build_sentencepiece

NAMES = ("qwen3_5", "qwen3_5_compact", "qwen3", "mistral_v3")

__all__ = ["NAMES", "Tokenizer", "asset_dir", "load", "vocab_size"]


def asset_dir(name: str) -> Path:
    """Folder of a shipped tokenizer inside the installed package."""
    if name not in NAMES:
        raise ValueError(f"unknown tokenizer {name!r} (expected one of {', '.join(NAMES)} or a path)")
    return Path(str(importlib.resources.files("a1jax") / "assets" / "tokenizers" / name))


def load(name_or_path: str | Path) -> Tokenizer:
    """A shipped tokenizer by name, or one built from the files at a path (see the module docstring)."""
    if isinstance(name_or_path, str) and name_or_path in NAMES:
        return _load_path(asset_dir(name_or_path).resolve())
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"tokenizer {name_or_path!r} is neither one of {', '.join(NAMES)} nor an existing path")
    return _load_path(path.resolve())


@functools.lru_cache(maxsize=8)
def vocab_size(name_or_path: str | Path) -> int:
    """`load(name_or_path).vocab_size`, read from the files without building the tokenizer for the shipped BPE
    layouts (added tokens continue the base ids, which the builders check), so config validation stays fast."""
    path = asset_dir(name_or_path) if isinstance(name_or_path, str) and name_or_path in NAMES else \
        Path(name_or_path).expanduser()
    if path.is_dir() and (path / "compact.json").is_file():
        path = path / "compact.json"
    if path.is_file() and path.name == "compact.json":
        return len(json.loads(path.read_text())["ids"])
    if path.is_dir():
        ranks = sorted(path.glob("*.tiktoken"))
        if len(ranks) == 1 and (path / "special_tokens.json").is_file():
            with open(ranks[0], "rb") as f:
                base = sum(1 for line in f if line.strip())
            return base + len(json.loads((path / "special_tokens.json").read_text())["added_tokens"])
        if all((path / f).is_file() for f in ("vocab.json", "merges.txt", "tokenizer_config.json")):
            config = json.loads((path / "tokenizer_config.json").read_text())
            return len(json.loads((path / "vocab.json").read_text())) + len(config.get("added_tokens_decoder", {}))
    return load(name_or_path).vocab_size


@functools.lru_cache(maxsize=8)
def _load_path(path: Path) -> Tokenizer:
    if path.is_file():
        if path.name == "tokenizer.json":
            return build_from_tokenizer_json(path)
        if path.name == "compact.json":
            return load_compact(path, load)
        if ".model" in path.name:
            return build_sentencepiece(path)
        raise ValueError(f"{path}: not a tokenizer file (expected tokenizer.json or a SentencePiece *.model)")
    files = {p.name for p in path.iterdir()}
    if "compact.json" in files:
        return load_compact(path / "compact.json", load)
    ranks = sorted(path.glob("*.tiktoken"))
    if len(ranks) == 1 and "special_tokens.json" in files:
        return build_tiktoken_ranks(ranks[0], path / "special_tokens.json")
    if {"vocab.json", "merges.txt", "tokenizer_config.json"} <= files:
        return build_qwen2_style(path)
    if "tokenizer.json" in files:
        return build_from_tokenizer_json(path / "tokenizer.json")
    models = sorted(p for p in path.iterdir() if ".model" in p.name)
    if len(models) == 1:
        return build_sentencepiece(models[0])
    raise ValueError(
        f"{path}: no tokenizer found (expected qwen3_6.tiktoken + special_tokens.json, vocab.json + merges.txt + "
        f"tokenizer_config.json, tokenizer.json, or exactly one SentencePiece *.model file)")
