"""Shared by the importers whose inputs are one JSON document per file (ToolBench answers, SWE-agent .traj)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

from a1jax.data.schema import INVALID_JSON, RecordError


def convert_json_file(path: Path, domain: str, convert: Callable[[Any, Path, str], dict | RecordError]
                      ) -> Iterator[tuple[str, dict | RecordError]]:
    """Yields (where, record or error) for the single document in `path`; bad JSON is reported, never raised."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        yield str(path), RecordError(INVALID_JSON, f"not valid JSON ({e.msg} at char {e.pos})")
        return
    yield str(path), convert(data, path, domain)
