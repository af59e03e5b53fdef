"""Token cache: each trajectory JSONL file tokenized once into flat .npy arrays, reused by every epoch and run.

A cache entry lives in `<cache_dir>/<file stem>-<key[:16]>/`, where the key is a sha256 of the file's bytes, the
tokenizer fingerprint (its source files and builder version), the supervision mode and CACHE_VERSION; change any of
them and a new entry is built. An entry holds

  tokens.npy     int32[total]   all records' tokens, concatenated
  loss_mask.npy  uint8[total]   unshifted per-token mask (`chat.tokenize_trajectory`)
  turn_ids.npy   int32[total]   ChatML turn index of each token (split points for overlong records)
  offsets.npy    int64[R + 1]   record r is [offsets[r], offsets[r + 1])
  records.json   ids, domains, source path, tokenizer name, the skip report of records that failed validation

A source given as a URL (`gs://bucket/x.jsonl`, read through `a1jax.storage`) is copied into
`<cache_dir>/remote/` first (its bytes are needed for the key anyway) and tokenized from there; the entry and its
skip report name the URL. The cache itself is local: its arrays are memory-mapped.

The key is the file's content, not its path, so two files with the same name and bytes share an entry; the skip
report's `file:line` locations are rewritten to the path being loaded, never the path the entry was built from.
Every load logs the file's skips (counts per reason and the first few locations) to the `a1jax.data` logger.

Arrays are memory-mapped, so a run touches only the records it reads. Entries are written to a temporary folder
and renamed into place, so concurrent processes (several hosts sharing a file system) never see half an entry.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from a1jax import storage
from a1jax.data.chat import tokenize_trajectory
from a1jax.data.records import SkipReport, read_records
from a1jax.data.tokenizers import Tokenizer

CACHE_VERSION = "a1jax-token-cache-2"  # 2: stricter validation (schema.load_json, duplicate ids)
DEFAULT_CACHE_DIR = os.environ.get("A1JAX_DATA_CACHE", "~/.cache/a1jax/data")
_ARRAYS = ("tokens", "loss_mask", "turn_ids", "offsets")

log = logging.getLogger("a1jax.data")


def file_sha256(path: Path | str) -> str:
    return storage.sha256(path)


def cache_key(path: Path, tokenizer: Tokenizer, supervise: str) -> str:
    parts = [CACHE_VERSION, file_sha256(path), tokenizer.fingerprint, supervise]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclasses.dataclass
class TokenCache:
    """One tokenized file: `len(cache)` records, `cache[r]` -> {tokens, loss_mask, turn_ids, domain, id}."""

    path: Path  # the cache folder
    tokens: np.ndarray
    loss_mask: np.ndarray
    turn_ids: np.ndarray
    offsets: np.ndarray
    ids: list[str]
    domains: list[str]
    skips: SkipReport

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, r: int) -> dict:
        start, end = int(self.offsets[r]), int(self.offsets[r + 1])
        return {"tokens": np.asarray(self.tokens[start:end]), "loss_mask": np.asarray(self.loss_mask[start:end]),
                "turn_ids": np.asarray(self.turn_ids[start:end]), "domain": self.domains[r], "id": self.ids[r]}

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _read_entry(folder: Path, source: Path) -> TokenCache:
    meta = json.loads((folder / "records.json").read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    skips = SkipReport.from_json(meta["skips"]).rebased(meta["source"], str(source))
    return TokenCache(path=folder, ids=meta["ids"], domains=meta["domains"], skips=skips, **arrays)


def _write_entry(folder: Path, source: Path, tokenizer: Tokenizer, supervise: str, strict: bool) -> None:
    skips = SkipReport()
    chunks = collections.defaultdict(list)
    ids, domains, lengths = [], [], []
    for _, record in read_records(source, strict=strict, skips=skips):
        example = tokenize_trajectory(record, tokenizer, supervise=supervise)
        for name in ("tokens", "loss_mask", "turn_ids"):
            chunks[name].append(example[name])
        ids.append(example["id"])
        domains.append(example["domain"])
        lengths.append(len(example["tokens"]))
    dtypes = {"tokens": np.int32, "loss_mask": np.uint8, "turn_ids": np.int32}
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        for name, dtype in dtypes.items():
            np.save(tmp / f"{name}.npy", np.concatenate(chunks[name]).astype(dtype) if chunks[name]
                    else np.zeros(0, dtype))
        np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        meta = {"source": str(source), "tokenizer": tokenizer.name, "tokenizer_fingerprint": tokenizer.fingerprint,
                "supervise": supervise, "ids": ids, "domains": domains,
                "skips": skips.to_json()}
        (tmp / "records.json").write_text(json.dumps(meta, ensure_ascii=False))
        tmp.chmod(0o755)  # mkdtemp makes it private; other users of a shared cache must read it
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same entry first; keep theirs
            if not (folder / "records.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_or_build(source: str | Path, tokenizer: Tokenizer, *, cache_dir: str | Path = DEFAULT_CACHE_DIR,
                  supervise: str = "all", strict: bool = False) -> TokenCache:
    """The cache entry of a JSONL file, tokenizing it first if no entry matches its content and tokenizer."""
    if storage.is_remote(cache_dir):
        raise ValueError(f"data.cache_dir={cache_dir!r}: the token cache must be a local directory (its arrays are "
                         f"memory-mapped); sources may be URLs")
    root = Path(cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    shown = str(source)
    source = _local_copy(shown, root) if storage.is_remote(shown) else Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such trajectory file")
    folder = root / f"{source.stem}-{cache_key(source, tokenizer, supervise)[:16]}"
    if not (folder / "records.json").exists():
        log.info("tokenizing %s with %s into %s", source, tokenizer.name, folder)
        _write_entry(folder, source, tokenizer, supervise, strict)
    entry = _read_entry(folder, shown)
    if strict and entry.skips.total:  # the entry was built by a lenient run; strict mode must still stop
        raise ValueError(entry.skips.first[0] if entry.skips.first
                         else next(iter(entry.skips.examples.values()))[0])
    entry.skips.log(shown)
    return entry


def _local_copy(url: str, root: Path) -> Path:
    """`url`'s bytes in `<root>/remote/<hash of url>/<name>`, downloaded afresh (written to a temporary name and
    renamed, so a concurrent reader never sees a part)."""
    if not storage.isfile(url):
        raise FileNotFoundError(f"{url}: no such trajectory file")
    folder = root / "remote" / hashlib.sha256(url.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / url.rstrip("/").rsplit("/", 1)[-1]
    fd, tmp = tempfile.mkstemp(prefix=local.name + ".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, storage.open(url, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return local
