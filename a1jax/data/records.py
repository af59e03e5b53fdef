"""Reading and writing trajectory JSONL, with every bad record reported as `file:line: reason`.

Two modes, one rule: nothing is silently mangled.
- strict: the first bad record raises `ValueError("file:line: detail")` and stops the run;
- default: the bad record is skipped, its reason counted in a `SkipReport`, which is printed and logged at the end
  (counts per reason and the first FIRST_LOCATIONS `file:line: detail` lines).

A bad line never takes its file down: lines are decoded one at a time (invalid UTF-8 is that line's error), parsed
with `schema.load_json` (deep nesting, huge integers, NaN are that line's error) and validated; a record whose id
was already seen in the file is skipped as "duplicate id". `write_records` writes a temporary file next to the
target and renames it into place, so an interrupted run never leaves a truncated output.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from a1jax.data.schema import DUPLICATE_ID, RecordError, load_json, validate_record

log = logging.getLogger("a1jax.data")
FIRST_LOCATIONS = 5  # skipped records whose `file:line: detail` the log names, whatever their reason


@dataclasses.dataclass
class SkipReport:
    """Skipped records counted by reason code, with the first few `file:line: detail` lines of each kept."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    examples_per_reason: int = 3
    first: list[str] = dataclasses.field(default_factory=list)  # the first FIRST_LOCATIONS skips, in order

    def add(self, where: str, error: RecordError) -> None:
        self.counts[error.reason] += 1
        line = f"{where}: {error.detail}"
        kept = self.examples.setdefault(error.reason, [])
        if len(kept) < self.examples_per_reason:
            kept.append(line)
        if len(self.first) < FIRST_LOCATIONS:
            self.first.append(line)
        log.debug("skipped %s", line)

    def merge(self, other: "SkipReport") -> None:
        self.counts.update(other.counts)
        for reason, lines in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(lines[: max(0, self.examples_per_reason - len(kept))])
        self.first.extend(other.first[: max(0, FIRST_LOCATIONS - len(self.first))])

    def to_json(self) -> dict:
        return {"counts": dict(self.counts), "examples": self.examples, "first": self.first}

    @classmethod
    def from_json(cls, d: dict) -> "SkipReport":
        return cls(counts=collections.Counter(d["counts"]), examples=d["examples"], first=list(d.get("first", [])))

    def rebased(self, old: str, new: str) -> "SkipReport":
        """The same report with locations `old:...` renamed `new:...` (a cache entry read for another path)."""
        def move(line: str) -> str:
            return new + line[len(old):] if line.startswith(old + ":") else line
        return SkipReport(counts=collections.Counter(self.counts), examples_per_reason=self.examples_per_reason,
                          examples={r: [move(x) for x in xs] for r, xs in self.examples.items()},
                          first=[move(x) for x in self.first])

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
        out.append(f"first {len(self.first)} skipped:")
        out += [f"  {line}" for line in self.first]
        return out

    def log(self, what: str) -> None:
        if self.counts:
            log.warning("%s: skipped %d records: %s; first: %s", what, self.total, dict(self.counts.most_common()),
                        " | ".join(self.first))
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
    seen: set[str] = set()
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = load_json(line)
                validate_record(record)
                if record["id"] in seen:
                    raise RecordError(DUPLICATE_ID, f"id {record['id']!r} was already used by an earlier record of "
                                                    f"this file")
            except RecordError as e:
                if strict:
                    raise ValueError(f"{where}: {e.detail}") from None
                skips.add(where, e)
                continue
            seen.add(record["id"])
            yield line_no, record


def write_records(path: str | Path, records: Iterable[dict]) -> int:
    """Write records as JSONL (UTF-8, non-ASCII kept as is, key order kept); returns how many were written.

    Atomic: the lines go to a temporary file in the same folder, renamed over `path` only once all are written; if
    `records` raises (a strict import meeting a bad record), `path` is left as it was. A `gs://` path: written to a
    local temporary file, then uploaded as one object (which appears whole when the upload completes)."""
    from a1jax import storage
    if storage.is_remote(path):
        with tempfile.TemporaryDirectory(prefix="a1jax-records-") as tmp:
            n = write_records(os.path.join(tmp, "records.jsonl"), records)
            storage.upload(os.path.join(tmp, "records.jsonl"), path)
        return n
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
                n += 1
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the output gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return n
