"""Shared by the importers whose inputs are one JSON document per file (ToolBench answers, SWE-agent .traj)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

from a1jax.data.schema import RecordError, load_json


def read_document(path: Path) -> Any:
    """The JSON value of a whole file; `RecordError` for invalid UTF-8 or JSON (see `schema.load_json`)."""
    return load_json(path.read_bytes())


def convert_json_file(path: Path, domain: str, convert: Callable[[Any, Path, str], dict | RecordError]
                      ) -> Iterator[tuple[str, dict | RecordError]]:
    """Yields (where, record or error) for the single document in `path`; bad JSON is reported, never raised.

    The document is the record, so its location is the file itself."""
    try:
        data = read_document(path)
    except RecordError as e:
        yield str(path), e
        return
    yield str(path), convert(data, path, domain)
