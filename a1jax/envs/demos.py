"""Expert demonstrations: the scripted solver's trajectories, checked twice before they are written.

Every record is validated against the trajectory schema (a1jax/data/schema.py) and verified by its own domain
(reward 1.0); a record that fails either is a bug in the domain, so it raises instead of being skipped. The output is
ordinary trajectory JSONL: give it to the data pipeline like any other source (`Source(("demos.jsonl",))`).
"""
from __future__ import annotations

from typing import Iterator

from a1jax.data.records import write_records
from a1jax.data.schema import RecordError, validate_record
from a1jax.envs import registry


def demonstrations(domain: str, *, n: int, split: str = "train", seed: int = 0, horizon: int | None = None,
                   **options) -> Iterator[dict]:
    """`n` validated, verified expert trajectories of `domain` (deterministic in split, seed and horizon)."""
    env = registry.get(domain, **options)
    for task in env.tasks(split, seed, n=n, horizon=horizon):
        record = env.solve(task)
        try:
            validate_record(record)
        except RecordError as e:
            raise RuntimeError(f"{domain}: the expert's record for task {task.id} breaks the schema: {e}") from e
        verdict = env.verify(task, record)
        if not verdict.success:
            raise RuntimeError(f"{domain}: the expert fails task {task.id}: {verdict.reason}")
        record["metadata"]["reward"] = verdict.reward
        yield record


def write_demonstrations(path: str, domain: str, *, n: int, split: str = "train", seed: int = 0,
                         horizon: int | None = None, **options) -> int:
    """Writes `demonstrations(...)` as JSONL; returns the number of records."""
    return write_records(path, demonstrations(domain, n=n, split=split, seed=seed, horizon=horizon, **options))
