"""What every domain shares: tool schemas, tool dispatch with errors for the model, the expert's transcript writer,
answer normalisation, and the deterministic seeding that keeps train and test tasks apart.

Tool errors never raise: an unknown tool, a missing or mistyped argument, or a tool that fails comes back as an
"Error: ..." string, which is what the model reads as the tool result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import string
from typing import Any, Callable, Sequence

from a1jax.envs.base import Session, StepResult, Task
from a1jax.rollout.toolcalls import ToolCall

SPLITS = ("train", "valid", "test")
TEST_FRACTION = 0.2  # of the task keys
VALID_FRACTION = 0.1  # of the task keys (model selection, e.g. stage 3's teacher check); the rest are train


class ToolError(ValueError):
    """Raised by a tool for a bad request; its message goes back to the model as "Error: <message>"."""


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # name -> (JSON-schema type, description); all required
    fn: Callable[..., str]

    def schema(self) -> dict:
        props = {k: {"type": t, "description": d} for k, (t, d) in self.parameters.items()}
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": {
            "type": "object", "properties": props, "required": list(self.parameters)}}}


_TYPES = {"string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,), "object": (dict,),
          "array": (list,)}


def call_tool(tools: dict[str, Tool], call: ToolCall) -> str:
    """One tool result string; every failure is an "Error: ..." string naming what was wrong."""
    tool = tools.get(call.name)
    if tool is None:
        return f"Error: unknown tool {call.name!r}; available: {', '.join(sorted(tools))}."
    args = call.arguments
    if not isinstance(args, dict):
        return f"Error: arguments of {call.name!r} must be an object, got {type(args).__name__}."
    unknown = sorted(set(args) - set(tool.parameters))
    if unknown:
        return (f"Error: {call.name!r} got unknown argument(s) {', '.join(unknown)}; expected "
                f"{', '.join(tool.parameters)}.")
    missing = [p for p in tool.parameters if p not in args]
    if missing:
        return f"Error: {call.name!r} is missing required argument(s): {', '.join(missing)}."
    for p, (kind, _) in tool.parameters.items():
        ok = isinstance(args[p], _TYPES[kind]) and not (kind in ("number", "integer") and isinstance(args[p], bool))
        if not ok:
            return f"Error: argument {p!r} of {call.name!r} must be a {kind}, got {type(args[p]).__name__}."
    try:
        return tool.fn(**args)
    except ToolError as e:
        return f"Error: {e}"


class ToolEnv:
    """Base for the stateless tool domains: the episode state is the number of calls made so far."""

    name: str = ""
    max_calls: int = 1000  # a runaway policy ends the episode here

    def tools_for(self, task: Task) -> dict[str, Tool]:
        raise NotImplementedError

    def reset(self, task: Task) -> dict:
        return {"task": task, "calls": 0}

    def step(self, state: dict, tool_calls: Sequence[ToolCall]) -> StepResult:
        tools = self.tools_for(state["task"])
        results = [call_tool(tools, c) for c in tool_calls]
        calls = state["calls"] + len(tool_calls)
        return StepResult(results=results, state={**state, "calls": calls}, done=calls >= self.max_calls)


class Transcript:
    """Writes an expert trajectory: every call runs through a `Session`, so its recorded result is exactly what
    `step` returns for it."""

    def __init__(self, env, task: Task):
        self.task, self.session = task, Session(env, task)
        self.record = task.prompt_record()
        self.record["metadata"]["expert"] = True
        self.calls = 0

    def call(self, name: str, thought: str = "", **arguments) -> str:
        self.calls += 1
        call_id = f"call_{self.calls}"
        self.record["messages"].append({"role": "assistant", "content": "", "reasoning_content": thought,
                                        "tool_calls": [{"id": call_id, "type": "function",
                                                        "function": {"name": name, "arguments": arguments}}]})
        result = self.session.step([ToolCall(name, arguments)])[0]
        self.record["messages"].append({"role": "tool", "tool_call_id": call_id, "content": result})
        return result

    def answer(self, content: str, thought: str = "") -> dict:
        self.record["messages"].append({"role": "assistant", "content": content, "reasoning_content": thought})
        return self.record


# --- answers ---------------------------------------------------------------------------------------------------------

_ANSWER_LINE = re.compile(r"^\s*(?:final\s+)?answer\s*[:：]\s*(.+?)\s*$", re.I | re.M)
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "“”‘’«»。，、：；！？"})


def answer_text(content: str) -> str:
    """The answer part of a final message: after the last "Answer:" line if there is one, else all of it."""
    lines = _ANSWER_LINE.findall(content or "")
    return lines[-1] if lines else (content or "")


def normalize(text: str) -> str:
    """Case, punctuation and whitespace folded: "  Kesh  Marlo." -> "kesh marlo"."""
    return " ".join(text.lower().translate(_PUNCT).split())


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in `text` (thousands separators removed), or None."""
    found = _NUMBER.findall((text or "").replace(",", ""))
    return float(found[-1]) if found else None


def fmt(x: float) -> str:
    """How tools print numbers: 12 significant digits, so chained results lose nothing at a 1e-4 tolerance."""
    return format(float(x), ".12g")


# --- tasks ------------------------------------------------------------------------------------------------------------

def check_request(domain: str, split: str, n: int, horizon: int | None, max_horizon: int, min_horizon: int = 1):
    if split not in SPLITS:
        raise ValueError(f"{domain}: split={split!r}; expected one of {', '.join(SPLITS)}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"{domain}: n={n!r}; expected a non-negative integer")
    if horizon is not None and (not isinstance(horizon, int) or isinstance(horizon, bool)
                                or not min_horizon <= horizon <= max_horizon):
        raise ValueError(f"{domain}: horizon={horizon!r}; expected an integer in [{min_horizon}, {max_horizon}] "
                         f"(or None for a mix)")


def rng_for(*key) -> random.Random:
    """A Random seeded from a stable hash of `key` (Python's hash() is salted per process)."""
    return random.Random(int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big"))


def split_of(key: str) -> str:
    """"test" for a fixed TEST_FRACTION of task keys, "valid" for the next VALID_FRACTION, "train" for the rest:
    disjoint by construction."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32
    return "test" if h < TEST_FRACTION else "valid" if h < TEST_FRACTION + VALID_FRACTION else "train"


def sample_in_split(make: Callable[[random.Random], tuple[str, Any]], split: str, rng: random.Random,
                    tries: int = 1000):
    """Draws `make(rng) -> (key, value)` until the key belongs to `split`; returns the value."""
    for _ in range(tries):
        key, value = make(rng)
        if split_of(key) == split:
            return value
    raise RuntimeError(f"no task of split {split!r} found in {tries} draws")


def horizons_for(horizon: int | None, rng: random.Random, mix: Sequence[int]) -> int:
    return horizon if horizon is not None else rng.choice(list(mix))


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True)
