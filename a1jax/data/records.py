"""Reading and writing trajectory JSONL, with every bad record reported as `file:line: reason`.

Two modes, one rule: nothing is silently mangled.
- strict: the first bad record raises `ValueError("file:line: detail")` and stops the run;
- default: the bad record is skipped, its reason counted in a `SkipReport`, which is printed and logged at the end.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
from pathlib import Path
from typing import Iterable, Iterator

from a1jax.data.schema import INVALID_JSON, RecordError, validate_record

log = logging.getLogger("a1jax.data")


@dataclasses.dataclass
class SkipReport:
    """Skipped records counted by reason code, with the first few `file:line: detail` lines of each kept."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    examples_per_reason: int = 3

    def add(self, where: str, error: RecordError) -> None:
        self.counts[error.reason] += 1
        line = f"{where}: {error.detail}"
        kept = self.examples.setdefault(error.reason, [])
        if len(kept) < self.examples_per_reason:
            kept.append(line)
        log.debug("skipped %s", line)

    def merge(self, other: "SkipReport") -> None:
        self.counts.update(other.counts)
        for reason, lines in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(lines[: max(0, self.examples_per_reason - len(kept))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        """Human-readable summary: one line per reason (most frequent first), then the example locations."""
        if not self.counts:
            return ["skipped: 0 records"]
        out = [f"skipped: {self.total} records"]
        for reason, n in self.counts.most_common():
            out.append(f"  {n:6d}  {reason}")
            out += [f"          e.g. {example}" for example in self.examples.get(reason, [])]
        return out

    def log(self, what: str) -> None:
        if self.counts:
            log.warning("%s: skipped %d records: %s", what, self.total, dict(self.counts.most_common()))
        else:
            log.info("%s: no records skipped", what)


def check(record: dict, where: str, *, strict: bool, skips: SkipReport) -> bool:
    """Validate one record: True if valid; in strict mode raise `ValueError(where: detail)`, else count the skip."""
    try:
        validate_record(record)
        return True
    except RecordError as e:
        if strict:
            raise ValueError(f"{where}: {e.detail}") from None
        skips.add(where, e)
        return False


def read_records(path: str | Path, *, strict: bool = False, skips: SkipReport | None = None
                 ) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) for each valid record of a JSONL file; bad ones raise or are counted."""
    path = Path(path)
    skips = SkipReport() if skips is None else skips
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                error = RecordError(INVALID_JSON, f"not valid JSON ({e.msg} at char {e.pos})")
                if strict:
                    raise ValueError(f"{where}: {error.detail}") from None
                skips.add(where, error)
                continue
            if check(record, where, strict=strict, skips=skips):
                yield line_no, record


def write_records(path: str | Path, records: Iterable[dict]) -> int:
    """Write records as JSONL (UTF-8, non-ASCII kept as is, key order kept); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n
