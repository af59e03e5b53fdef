"""The environment protocol the rollout loop talks to, and a scripted environment for tests.

An environment is created per task and executes the model's well-formed tool calls in order. Real environments come
from the environments issue; anything with this `step` method plugs into `a1jax.rollout.agent.rollout`.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

from a1jax.rollout.toolcalls import ToolCall


class Environment(Protocol):
    def step(self, calls: Sequence[ToolCall]) -> list[str]:
        """One result string per call, in order; shown to the model inside <tool_response> blocks."""
        ...


class ScriptedEnvironment:
    """Answers each call from `handlers[name](**arguments)` (or a fixed string); records every call it saw."""

    def __init__(self, handlers: dict[str, Callable[..., str] | str]):
        self.handlers = handlers
        self.calls: list[ToolCall] = []

    def step(self, calls: Sequence[ToolCall]) -> list[str]:
        results = []
        for call in calls:
            self.calls.append(call)
            h = self.handlers.get(call.name, f"Error: no handler for {call.name!r}")
            results.append(str(h(**call.arguments)) if callable(h) else str(h))
        return results
