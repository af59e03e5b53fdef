"""`a1jax data stats`: what a set of trajectory files amounts to once tokenized.

Records, tokens, the length distribution, the supervised fraction per domain, and the reasons records were skipped.
It reads through the token cache, so the numbers are exactly what the pipeline will train on, and running stats
first warms the cache for training.
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Sequence

import numpy as np

from a1jax.data.cache import load_or_build
from a1jax.data.records import SkipReport
from a1jax.data.tokenizers import Tokenizer

_BUCKETS = [1 << k for k in range(10, 19)]  # 1K .. 256K


def compute_stats(paths: Sequence[str | Path], tokenizer: Tokenizer, *, cache_dir: str | Path, strict: bool = False,
                  supervise: str = "all") -> dict:
    lengths, supervised, domains = [], [], []
    skips = SkipReport()
    files = []
    for path in paths:
        cache = load_or_build(path, tokenizer, cache_dir=cache_dir, supervise=supervise, strict=strict)
        n = cache.lengths()
        cumulative = np.concatenate([[0], np.cumsum(cache.loss_mask, dtype=np.int64)])
        per_record = cumulative[cache.offsets[1:]] - cumulative[cache.offsets[:-1]]
        lengths.append(n)
        supervised.append(per_record)
        domains += cache.domains
        skips.merge(cache.skips)
        files.append((str(path), len(cache), cache.skips.total))
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    supervised = np.concatenate(supervised) if supervised else np.zeros(0, np.int64)
    per_domain = collections.defaultdict(lambda: [0, 0, 0])
    for domain, n, s in zip(domains, lengths.tolist(), supervised.tolist()):
        entry = per_domain[domain]
        entry[0] += 1
        entry[1] += n
        entry[2] += s
    return {"tokenizer": tokenizer.name, "files": files, "lengths": lengths, "supervised": supervised,
            "domains": dict(sorted(per_domain.items())), "skips": skips}


def format_stats(stats: dict, *, seq_len: int | None = None) -> list[str]:
    lengths = stats["lengths"]
    out = [f"tokenizer {stats['tokenizer']}"]
    for path, n, skipped in stats["files"]:
        out.append(f"  {path}: {n} records, {skipped} skipped")
    total, supervised = int(lengths.sum()), int(stats["supervised"].sum())
    out.append(f"records {len(lengths)}   tokens {total:,}   supervised tokens {supervised:,} "
               f"({supervised / max(total, 1):.1%})")
    if len(lengths):
        q = np.percentile(lengths, [0, 10, 50, 90, 99, 100]).astype(int)
        out.append("length  min {} p10 {} p50 {} p90 {} p99 {} max {}   mean {:.0f}".format(*q, lengths.mean()))
        edges = [0] + _BUCKETS + [np.iinfo(np.int64).max]
        counts = np.histogram(lengths, bins=edges)[0]
        labels = [f"<= {b // 1024}K" for b in _BUCKETS] + [f"> {_BUCKETS[-1] // 1024}K"]
        out += [f"  {label:>8} {c:7d}" for label, c in zip(labels, counts) if c]
    if seq_len is not None:
        over = int((lengths > seq_len).sum())
        out.append(f"longer than seq_len={seq_len}: {over} records (split at turn boundaries or dropped)")
    out.append("domain                records      tokens   supervised")
    for domain, (n, tokens, sup) in stats["domains"].items():
        out.append(f"  {domain:<18} {n:8d} {tokens:11,d}   {sup / max(tokens, 1):9.1%}")
    out += stats["skips"].lines()
    return out
