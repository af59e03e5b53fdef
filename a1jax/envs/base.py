"""The environment protocol: tasks, reset, step, verify, and a scripted expert.

An environment is pure Python and deterministic given its seed. It never holds per-episode state on `self`: `reset`
returns a state object and `step` returns a new one, so one environment serves many concurrent rollouts.

Trajectories are records in the a1jax trajectory schema (a1jax/data/schema.py): id, source, domain, messages, tools,
metadata. `verify` reads the final assistant message (and, for state-based domains, the tool calls in the
trajectory), never the hidden state of a live episode.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Protocol, Sequence

from a1jax.rollout.toolcalls import ToolCall


@dataclasses.dataclass(frozen=True)
class Task:
    id: str  # unique within (domain, split, seed), e.g. "search/test/s0/17"
    domain: str  # the registry name of the environment
    messages: list  # the prompt: optional system message, then the user query (trajectory-schema messages)
    tools: list  # OpenAI tool schemas offered to the model ([] for tool-free domains)
    horizon: int  # how many dependent tool calls the expert solution needs (0 for tool-free domains)
    answer: Any = None  # hidden ground truth for `verify`; never shown to the model
    metadata: dict = dataclasses.field(default_factory=dict)

    def prompt_record(self) -> dict:
        """The trajectory-schema prefix the rollout loop starts from."""
        return {"id": self.id, "source": f"envs:{self.domain}", "domain": self.domain,
                "messages": [dict(m) for m in self.messages], "tools": list(self.tools),
                "metadata": {"horizon": self.horizon, **self.metadata}}


@dataclasses.dataclass(frozen=True)
class StepResult:
    results: list  # one string per tool call, in order
    state: Any
    done: bool  # the episode cannot continue (e.g. a terminal tool was called); the model may still answer


@dataclasses.dataclass(frozen=True)
class Verdict:
    reward: float  # in [0, 1]
    success: bool  # reward == 1 for binary domains; reward >= the domain's success threshold otherwise
    reason: str  # one line a human can read: why it passed or what was wrong


class Environment(Protocol):
    name: str  # the domain name, also the registry key

    def tasks(self, split: str, seed: int, *, n: int, horizon: int | None = None) -> Iterator[Task]:
        """`n` tasks, deterministic in (split, seed, horizon). split is "train", "valid" or "test" (disjoint)."""
        ...

    def reset(self, task: Task) -> Any: ...

    def step(self, state: Any, tool_calls: Sequence[ToolCall]) -> StepResult: ...

    def verify(self, task: Task, trajectory: dict) -> Verdict: ...

    def solve(self, task: Task) -> dict:
        """The scripted expert: a complete, correct trajectory record (reward 1.0 under `verify`), whose tool results
        are exactly what `step` returns for its calls."""
        ...


class Session:
    """Adapts (environment, task) to the rollout loop's per-task `step(calls) -> list[str]` interface
    (a1jax/rollout/environment.py)."""

    def __init__(self, env: Environment, task: Task):
        self.env, self.task = env, task
        self.state = env.reset(task)
        self.done = False

    def step(self, calls: Sequence[ToolCall]) -> list[str]:
        if self.done:
            return ["Error: the episode is over; give your final answer."] * len(calls)
        out = self.env.step(self.state, calls)
        self.state, self.done = out.state, out.done
        return list(out.results)


def final_answer(trajectory: dict) -> str:
    """The content of the last assistant message ("" if there is none)."""
    for m in reversed(trajectory.get("messages", [])):
        if m.get("role") == "assistant":
            return m.get("content") or ""
    return ""
