"""Importers: turn the agentic data shipped with the project into trajectory records (`a1jax.data.schema`).

  a1jax data import --format {tau_bench,toolbench,swe_agent} IN... --out FILE.jsonl --domain D [--strict]

Each format module has `EXTENSIONS` (what a folder given as IN is searched for, recursively) and
`convert_file(path, domain) -> iterator of (where, record | RecordError)`. Conversion never guesses: a source record
with no faithful conversion comes back as a `RecordError` (reason "unsupported record" or a schema reason) and is
reported like any other bad record. Locations: `file:LINE` for JSONL, `file:[i]` for the i-th entry of a JSON list,
`file` for one-record files (the document is the record). A record whose id an earlier record of the same run
already used is skipped as "duplicate id". Input files are read as bytes and parsed with `schema.load_json`, so
invalid UTF-8, NaN, huge integers or deep nesting are that record's error, never an exception.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from a1jax.data.importers import swe_agent, tau_bench, toolbench
from a1jax.data.records import SkipReport, check
from a1jax.data.schema import DUPLICATE_ID, RecordError

FORMATS = {"tau_bench": tau_bench, "toolbench": toolbench, "swe_agent": swe_agent}


def expand_inputs(paths: Iterable[str | Path], extensions: tuple[str, ...]) -> list[Path]:
    """Files as given, folders searched recursively for `extensions`; sorted within each folder for determinism."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(extensions))
            if not found:
                raise FileNotFoundError(f"{path}: no {' or '.join(extensions)} files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def import_records(fmt: str, paths: Iterable[str | Path], *, domain: str, strict: bool = False,
                   skips: SkipReport | None = None, tools: list | None = None, limit: int | None = None
                   ) -> Iterator[dict]:
    """Convert and validate every record of `paths`; bad ones raise (strict) or are counted in `skips`.

    tools: if given, replaces each record's tool list (for sources that do not ship their tool schemas).
    limit: stop after this many valid records.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown import format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if not domain:
        raise ValueError("--domain must be a non-empty string")
    module = FORMATS[fmt]
    skips = SkipReport() if skips is None else skips
    n = 0
    seen: set[str] = set()
    for path in expand_inputs(paths, module.EXTENSIONS):
        for where, converted in module.convert_file(path, domain):
            if isinstance(converted, dict) and converted["id"] in seen:
                converted = RecordError(DUPLICATE_ID, f"id {converted['id']!r} was already used by an earlier "
                                                      f"record of this import")
            if isinstance(converted, RecordError):
                if strict:
                    raise ValueError(f"{where}: {converted.detail}")
                skips.add(where, converted)
                continue
            if tools is not None:
                converted["tools"] = tools
            if check(converted, where, strict=strict, skips=skips):
                seen.add(converted["id"])
                yield converted
                n += 1
                if limit is not None and n >= limit:
                    return
