"""tau-bench (sierra-research/tau-bench) trajectories -> records.

`historical_trajectories/*.json` is a JSON list of `{task_id, reward, info, traj, trial}` where `traj` is already an
OpenAI chat (system policy, simulated user, assistant with `tool_calls`, tool with `tool_call_id`), so messages pass
through unchanged and the schema validation checks them. The tool JSON schemas are not part of these files (they
live in tau-bench's Python code), so `tools` is empty unless `a1jax data import --tools FILE` supplies them.

The few-shot files (`few_shot_data/*.jsonl`) hold only `messages_display`, a flattened "user: ... / assistant: None /
tool: ..." transcript whose tool calls are lost; they have no faithful conversion and are reported as
"unsupported record".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from a1jax.data.importers._json import read_document
from a1jax.data.schema import UNSUPPORTED_RECORD, RecordError, load_json

EXTENSIONS = (".json", ".jsonl")


def convert_file(path: Path, domain: str) -> Iterator[tuple[str, dict | RecordError]]:
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{line_no}", _convert_line(line, path, f"line{line_no}", domain)
        return
    try:
        data = read_document(path)
    except RecordError as e:
        yield str(path), e
        return
    if isinstance(data, dict):
        yield str(path), convert_entry(data, path, "0", domain)
    elif isinstance(data, list) and not data:
        yield str(path), RecordError(UNSUPPORTED_RECORD, "an empty JSON list: no trajectories in this file")
    elif isinstance(data, list):
        for i, entry in enumerate(data):
            yield f"{path}:[{i}]", convert_entry(entry, path, str(i), domain)
    else:
        yield str(path), RecordError(UNSUPPORTED_RECORD, f"expected a JSON list of trajectories, got {type(data).__name__}")


def _convert_line(line: bytes, path: Path, key: str, domain: str) -> dict | RecordError:
    try:
        entry = load_json(line)
    except RecordError as e:
        return e
    return convert_entry(entry, path, key, domain)


def convert_entry(entry: Any, path: Path, key: str, domain: str) -> dict | RecordError:
    """One tau-bench result `{task_id, trial, reward, info, traj}` -> record (messages copied as they are)."""
    if isinstance(entry, dict) and "messages_display" in entry and "traj" not in entry:
        return RecordError(UNSUPPORTED_RECORD, "a few-shot `messages_display` transcript: its tool calls were "
                                               "flattened to 'assistant: None', so it cannot become a trajectory")
    if not isinstance(entry, dict) or not isinstance(entry.get("traj"), list):
        return RecordError(UNSUPPORTED_RECORD, "not a tau-bench result (expected an object with a 'traj' list)")
    task_id, trial = entry.get("task_id"), entry.get("trial")
    for field, value in (("task_id", task_id), ("trial", trial)):
        if not (value is None or isinstance(value, (str, int)) and not isinstance(value, bool)):
            return RecordError(UNSUPPORTED_RECORD, f"'{field}' must be an integer or a string, got "
                                                   f"{type(value).__name__}")
    name = f"task{task_id}/trial{trial}" if task_id is not None else f"entry{key}"
    info = entry.get("info")
    task = info.get("task") if isinstance(info, dict) else None
    metadata = {"task_id": task_id, "trial": trial, "reward": entry.get("reward")}
    if isinstance(task, dict) and "user_id" in task:
        metadata["user_id"] = task["user_id"]
    return {
        "id": f"tau_bench/{path.stem}/{name}",
        "source": f"tau_bench:{path.name}",
        "domain": domain,
        "messages": entry["traj"],
        "tools": [],
        "metadata": metadata,
    }
