"""Builds a compact vocabulary list (a1jax/data/tokenizers/compact.py) from the recipe's corpus:

    python -m a1jax.data.tokenizers.build_compact --size 4096 \
        --out a1jax/assets/tokenizers/qwen3_5_compact/compact.json

The corpus is the six domains' expert demonstrations (horizons 1-8, train split) and the trajectories in
data/quickstart; the list keeps the base tokenizer's byte tokens, its special tokens and the most frequent ids.
A tool apart from compact.py, which loads the list: building it needs the environments, loading it must not.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Iterable

from a1jax.data.tokenizers.base import Tokenizer
from a1jax.data.tokenizers.compact import FORMAT, byte_token_ids


def select_ids(base: Tokenizer, counts: collections.Counter, size: int) -> list[int]:
    """The 256 byte tokens, every special token, then the most frequent other ids until `size` ids."""
    keep = set(byte_token_ids(base).values())
    keep |= set(base.special_tokens.values())
    if len(keep) > size:
        raise ValueError(f"--size {size}: the byte and special tokens alone need {len(keep)} ids")
    for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(keep) >= size:
            break
        keep.add(int(i))
    return sorted(keep)


def recipe_corpus(tok: Tokenizer, *, demos_per_domain: int = 200) -> Iterable[list[int]]:
    """Token ids of the recipe's corpus: expert demonstrations of every domain and horizon 1-8 (train split) and
    the shipped trajectories in data/quickstart (in the source tree)."""
    from a1jax.data.chat import tokenize_trajectory
    from a1jax.data.records import read_records
    from a1jax.envs import registry
    for d in registry.names():
        env = registry.get(d)
        for h in (1, 2, 4, 8):
            try:
                tasks = list(env.tasks("train", 0, n=demos_per_domain, horizon=h))
            except ValueError:  # a horizon the domain does not have
                continue
            for task in tasks:
                yield tokenize_trajectory(env.solve(task), tok)["tokens"]
    root = Path(__file__).resolve().parents[3] / "data" / "quickstart"
    for f in sorted(root.glob("*.jsonl")):
        for _, record in read_records(f):
            yield tokenize_trajectory(record, tok)["tokens"]


def main(argv=None) -> int:
    from a1jax.data import tokenizers
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="qwen3_5")
    p.add_argument("--name", default="qwen3_5_compact")
    p.add_argument("--size", type=int, default=4096, help="ids in the compact vocabulary")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    base = tokenizers.load(args.base)
    counts = collections.Counter()
    for ids in recipe_corpus(base):
        counts.update(int(i) for i in ids)
    ids = select_ids(base, counts, args.size)
    total = sum(counts.values())
    covered = sum(c for i, c in counts.items() if i in set(ids))
    spec = {"format": FORMAT, "name": args.name, "base": args.base, "base_fingerprint": base.fingerprint,
            "corpus": "a1jax.data.tokenizers.build_compact.recipe_corpus (six domains' demonstrations, data/quickstart)",
            "corpus_tokens": total, "corpus_coverage": covered / total, "ids": ids}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(spec, separators=(",", ":")) + "\n")
    print(f"{args.out}: {len(ids)} ids; {covered / total:.4%} of the corpus's {total:,} {args.base} tokens kept whole")
    return 0


if __name__ == "__main__":
    sys.exit(main())
