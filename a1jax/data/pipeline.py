"""The input pipeline: trajectory JSONL sources -> token cache -> shuffled weighted mixture -> packed [B, T] batches.

Entry point for trainers:

    config = PipelineConfig(sources=(Source(("data/quickstart/tau_bench_airline.jsonl",), weight=2.0), ...),
                            seq_len=8192, batch_size=8)
    it = make_iterator(config, process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)             # dict of numpy arrays, below
    state = it.get_state()       # JSON-serializable; save it with the checkpoint
    it.set_state(state)          # a fresh iterator resumes with exactly the batches the old one would have produced
    it.domains                   # {"customer_service": 0, "engineering": 1, ...}: domain name -> id

Batch layout (B = batch_size // process_count rows per process, T = seq_len):

    tokens       int32[B, T]    token ids; padding = the tokenizer's pad id
    targets      int32[B, T]    targets[b, t] = tokens[b, t + 1] when t + 1 is in the same segment, else pad id
    loss_mask    float32[B, T]  1.0 where targets[b, t] is supervised (the target is assistant output, see
                                `chat.tokenize_trajectory`), else 0.0; already shifted to align with `targets`, so the
                                model's cross-entropy at position t is weighted by loss_mask[b, t]. The last token of
                                every segment has no target: 0.0 there, and 0.0 on padding.
    segment_ids  int32[B, T]    1, 2, ... for the trajectories packed in a row, 0 on padding. Attention must be
                                block-diagonal causal over segments, and Gated DeltaNet state and conv history must
                                reset where the segment id changes (docs/spec/recipe.md §5).
    positions    int32[B, T]    0, 1, ... restarting at every segment; 0 on padding
    domain_ids   int32[B, T]    `domains[name]` of the segment's domain; 0 on padding (mask with loss_mask)

Loss normalization is the trainer's choice; the batch carries what each choice needs (mask, segments, domains).

Order and determinism:
- each source's records are shuffled with a seed derived from `seed` and the source's position, and reshuffled
  every epoch (grain's per-epoch index shuffle);
- sources are interleaved deterministically in proportion to their weights (grain `MapDataset.mix`); one epoch is
  as many records as all sources hold together, so a source weighted above its share repeats within an epoch and
  one weighted below it is subsampled; `num_epochs=None` repeats forever;
- process p of P reads every P-th record of the mixture, so hosts see disjoint data. With a finite `num_epochs`,
  hosts can run out a batch or two apart; multi-host runs should use `num_epochs=None` and a step budget;
- the iterator state holds the position of the record that starts the next batch (and how many pieces of a split
  record were already used), so restoring replays packing exactly.

Overlong records (> seq_len tokens) are dropped or split at turn boundaries (`packing.fit_to_length`); outcomes are
counted in `it.counts`. Long-horizon training uses seq_len up to 262,144 with one trajectory per row.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
from typing import Any, Sequence

import grain
import numpy as np

from a1jax.data import packing, tokenizers
from a1jax.data.cache import DEFAULT_CACHE_DIR, TokenCache, load_or_build
from a1jax.data.chat import SUPERVISE_MODES
from a1jax.data.records import SkipReport

log = logging.getLogger("a1jax.data")
MAX_SEQ_LEN = 262_144


@dataclasses.dataclass(frozen=True)
class Source:
    """Trajectory JSONL files sampled together.

    paths: record files (`a1jax.data.schema`), tokenized once each into the cache.
    weight: relative sampling weight among sources (> 0).
    domain: if set, every record of this source counts as this domain; else each record's own `domain`.
    """

    paths: tuple[str, ...]
    weight: float = 1.0
    domain: str | None = None


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that decides which batches a run sees. Validate with `validate()` (make_iterator does)."""

    sources: tuple[Source, ...]
    tokenizer: str = "qwen3_5"  # a tokenizers.load name or path
    seq_len: int = 8192  # T; up to 262,144
    batch_size: int = 8  # rows per step over all processes together
    packing: str = "first_fit"  # "first_fit" | "best_fit" | "single" (one trajectory per row)
    overlong: str = "split"  # "split" (at turn boundaries) | "drop"
    supervise: str = "all"  # "all" | "after_last_query" (chat.tokenize_trajectory)
    seed: int = 0
    num_epochs: int | None = 1  # None: repeat forever
    cache_dir: str = DEFAULT_CACHE_DIR
    strict: bool = False  # True: the first invalid record stops the run; False: skip and count it
    domains: tuple[str, ...] = ()  # fixes the domain -> id table; empty: the sorted domains found in the data

    def validate(self) -> None:
        def bad(field, value, expected):
            raise ValueError(f"PipelineConfig.{field}={value!r}: expected {expected}")

        if not self.sources:
            bad("sources", self.sources, "at least one Source")
        for i, source in enumerate(self.sources):
            if isinstance(source.paths, str) or not source.paths:
                bad(f"sources[{i}].paths", source.paths, "a non-empty tuple of file paths")
            if not source.weight > 0:
                bad(f"sources[{i}].weight", source.weight, "a positive number")
        if not 2 <= self.seq_len <= MAX_SEQ_LEN:
            bad("seq_len", self.seq_len, f"an integer in [2, {MAX_SEQ_LEN}]")
        if self.batch_size < 1:
            bad("batch_size", self.batch_size, "a positive integer")
        if self.packing not in packing.PACKING_ALGORITHMS:
            bad("packing", self.packing, "one of " + ", ".join(packing.PACKING_ALGORITHMS))
        if self.overlong not in packing.OVERLONG_POLICIES:
            bad("overlong", self.overlong, "one of " + ", ".join(packing.OVERLONG_POLICIES))
        if self.supervise not in SUPERVISE_MODES:
            bad("supervise", self.supervise, "one of " + ", ".join(SUPERVISE_MODES))
        if self.num_epochs is not None and self.num_epochs < 1:
            bad("num_epochs", self.num_epochs, "a positive integer or None (forever)")
        if not 0 <= self.seed < 2**32:
            bad("seed", self.seed, "an integer in [0, 2**32)")


class _Records:
    """Random access to one source's records as packing examples (grain data source protocol)."""

    def __init__(self, caches: Sequence[TokenCache], domain_ids: np.ndarray):
        self._caches = list(caches)
        self._starts = np.cumsum([0] + [len(c) for c in caches])
        self._domain_ids = domain_ids  # per record of this source

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict:
        c = int(np.searchsorted(self._starts, index, side="right")) - 1
        record = self._caches[c][index - int(self._starts[c])]
        return {"tokens": record["tokens"], "loss_mask": record["loss_mask"], "turn_ids": record["turn_ids"],
                "domain_id": int(self._domain_ids[index])}


def _source_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def load_sources(config: PipelineConfig) -> tuple[list[list[TokenCache]], dict[str, int]]:
    """Token caches of every source (built if missing) and the domain name -> id table."""
    tokenizer = tokenizers.load(config.tokenizer)
    caches = [[load_or_build(p, tokenizer, cache_dir=config.cache_dir, supervise=config.supervise,
                             strict=config.strict) for p in source.paths] for source in config.sources]
    skips = SkipReport()
    for cache in (c for source_caches in caches for c in source_caches):
        skips.merge(cache.skips)
    skips.log(f"pipeline ({sum(len(s.paths) for s in config.sources)} files)")
    found = set()
    for source, source_caches in zip(config.sources, caches):
        found |= {source.domain} if source.domain else {d for c in source_caches for d in c.domains}
    if config.domains:
        missing = sorted(found - set(config.domains))
        if missing:
            raise ValueError(f"PipelineConfig.domains={config.domains!r} lacks domains found in the data: {missing}")
        names = list(config.domains)
    else:
        names = sorted(found)
    return caches, {name: i for i, name in enumerate(names)}


def domain_table(config: PipelineConfig) -> dict[str, int]:
    """The domain name -> id table batches use (builds the token caches if needed)."""
    return load_sources(config)[1]


def make_dataset(config: PipelineConfig, *, process_index: int = 0, process_count: int = 1
                 ) -> "PackedBatchIterDataset":
    """The grain dataset of packed batches for one process (see the module docstring)."""
    config.validate()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if config.batch_size % process_count:
        raise ValueError(f"PipelineConfig.batch_size={config.batch_size} must be divisible by "
                         f"process_count={process_count}")
    caches, domains = load_sources(config)
    per_source = []
    for i, (source, source_caches) in enumerate(zip(config.sources, caches)):
        if source.domain:
            names = [source.domain] * sum(map(len, source_caches))
        else:
            names = [name for cache in source_caches for name in cache.domains]
        records = _Records(source_caches, np.asarray([domains[n] for n in names], np.int32))
        if len(records) == 0:
            raise ValueError(f"PipelineConfig.sources[{i}] {source.paths} has no valid records")
        # shuffle then repeat: grain reshuffles each epoch with (seed + epoch)
        per_source.append(grain.MapDataset.source(records).shuffle(seed=_source_seed(config.seed, i)).repeat())
    mixed = per_source[0] if len(per_source) == 1 else grain.MapDataset.mix(
        per_source, [s.weight for s in config.sources])
    if config.num_epochs is not None:
        records_per_epoch = sum(len(cache) for source_caches in caches for cache in source_caches)
        mixed = mixed[: config.num_epochs * records_per_epoch]
    mixed = mixed[process_index::process_count]
    records = mixed.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    tokenizer = tokenizers.load(config.tokenizer)
    return PackedBatchIterDataset(records, seq_len=config.seq_len, batch_size=config.batch_size // process_count,
                                  packing=config.packing, overlong=config.overlong, pad_id=tokenizer.pad_id,
                                  domains=domains)


def make_iterator(config: PipelineConfig, *, process_index: int = 0, process_count: int = 1
                  ) -> "PackedBatchIterator":
    """Iterator of packed batches with `get_state()` / `set_state()`, `.domains` and `.counts`."""
    return iter(make_dataset(config, process_index=process_index, process_count=process_count))


class PackedBatchIterDataset(grain.IterDataset):
    """Packs a stream of examples into [B, T] batches (first-fit, best-fit or one per row over the B rows)."""

    def __init__(self, parent: grain.IterDataset, *, seq_len: int, batch_size: int, packing: str = "first_fit",
                 overlong: str = "split", pad_id: int = 0, domains: dict[str, int] | None = None):
        super().__init__(parent)
        self._options = dict(seq_len=seq_len, batch_size=batch_size, packing=packing, overlong=overlong,
                             pad_id=pad_id, domains=dict(domains or {}))

    def __iter__(self) -> "PackedBatchIterator":
        return PackedBatchIterator(self._parent.__iter__(), **self._options)

    def __str__(self) -> str:
        return f"PackedBatchIterDataset({self._options['batch_size']}x{self._options['seq_len']})"


class PackedBatchIterator(grain.DatasetIterator):
    """See `PackedBatchIterDataset`. State: where the next batch starts in the example stream, plus counts."""

    def __init__(self, parent: grain.DatasetIterator, *, seq_len: int, batch_size: int, packing: str,
                 overlong: str, pad_id: int, domains: dict[str, int]):
        super().__init__(parent)
        self._seq_len, self._batch_size, self._packing = seq_len, batch_size, packing
        self._overlong, self._pad_id = overlong, pad_id
        self.domains = domains
        self.counts: collections.Counter = collections.Counter()  # example outcomes (packing.OUTCOMES), pieces
        # The example that did not fit into the last batch opens the next one: the parent's state before it, how
        # many of its pieces are already used, and the pieces still to place (None: start from the parent).
        self._carry_state: dict | None = None
        self._carry_used = 0
        self._carry_pieces: list[dict] = []
        self._replay = False  # after set_state: re-read the carried example, skipping its used pieces, uncounted

    def _pull(self) -> bool:
        """Read the next example into the carry; False when the parent is exhausted."""
        state = self._parent.get_state()
        try:
            example = next(self._parent)
        except StopIteration:
            return False
        pieces, outcome = packing.fit_to_length(example, self._seq_len, self._overlong)
        if self._replay:
            pieces = pieces[self._carry_used:]
            self._replay = False
        else:
            self.counts[outcome] += 1
            self.counts["pieces"] += len(pieces)
            self._carry_used = 0
        self._carry_state, self._carry_pieces = state, pieces
        return True

    def __next__(self) -> dict[str, np.ndarray]:
        packer = packing.RowPacker(self._batch_size, self._seq_len, self._packing)
        while True:
            if not self._carry_pieces and not self._pull():
                self._carry_state = None
                break
            if not self._carry_pieces:
                continue
            if not packer.try_add(self._carry_pieces[0]):
                break  # batch full; the carried piece opens the next batch
            self._carry_pieces.pop(0)
            self._carry_used += 1
        if packer.empty:
            raise StopIteration
        return packer.batch(self._pad_id)

    def get_state(self) -> dict[str, Any]:
        if self._carry_pieces:
            position = {"parent": self._carry_state, "used": self._carry_used, "replay": True}
        else:
            position = {"parent": self._parent.get_state(), "used": 0, "replay": False}
        return {**position, "counts": dict(self.counts)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._carry_state, self._carry_pieces = None, []
        self._carry_used = int(state["used"])
        self._replay = bool(state["replay"])
        self.counts = collections.Counter(state["counts"])

    def __str__(self) -> str:
        return f"PackedBatchIterator({self._batch_size}x{self._seq_len}, {self._packing}, overlong={self._overlong})"
