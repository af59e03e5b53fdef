"""The multi-turn agent rollout loop: render, generate, parse tool calls, execute, append, repeat.

Many tasks share one `Engine` batch; a row whose trajectory ends takes the next task from the queue at the next turn
boundary (continuous batching at turn granularity). A row's tokens are appended to its cache turn by turn and never
re-tokenized: the record's `token_ids` are exactly what the model read and wrote. When the shared cache runs out of
slots, the loop empties it and re-prefills the live rows from their own token ids (exact, only slower).

Terminations: final_answer (a turn without tool calls), forced_final_answer (the answer after the budget message),
max_turns, token_budget (over the per-trajectory budget even after the forced message, or cut mid-turn there),
max_new_tokens (one turn hit the per-turn limit), context (the cache cannot hold the trajectory).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Iterator

from a1jax.data.chat import render
from a1jax.rollout.environment import Environment
from a1jax.rollout.toolcalls import ToolCall, ToolCallError, parse_tool_calls

# As the Agents-A1 evaluation agent does at its 128K budget: stop tool use and answer from what is known.
FORCED_FINAL_MESSAGE = ("You have reached the maximum context length for this task. Do not call any more tools. "
                        "Based on the information gathered so far, give your final answer now.")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    max_turns: int = 100  # model calls per trajectory
    max_tokens: int = 131072  # per-trajectory token budget (prompt + all turns)
    enable_thinking: bool | str = True  # True, False or "model" (a1jax.data.chat.THINKING_MODES)
    forced_final_message: str = FORCED_FINAL_MESSAGE


@dataclasses.dataclass
class _Row:
    task: dict
    env: Environment
    ids: list = dataclasses.field(default_factory=list)  # tokens already in the cache (or to re-prefill)
    mask: list = dataclasses.field(default_factory=list)  # 1 on model-generated tokens
    logp: list = dataclasses.field(default_factory=list)
    logp_t1: list = dataclasses.field(default_factory=list)
    pending: list = dataclasses.field(default_factory=list)  # tokens to append before the next generation
    messages: list = dataclasses.field(default_factory=list)
    turns: list = dataclasses.field(default_factory=list)
    malformed: dict = dataclasses.field(default_factory=dict)
    in_cache: bool = False
    forced: bool = False
    started: float = 0.0


def _suffix(messages: list, *, enable_thinking: bool | str) -> str:
    """The template's text for `messages` (tool results / user turns) plus the generation prompt, after a turn that
    ended with <|im_end|>: rendered after a placeholder query and cut off, so the template stays the one source."""
    head = [{"role": "user", "content": "."}]
    before = render(head)
    full = render(head + messages, add_generation_prompt=True, enable_thinking=enable_thinking)
    return "\n" + full[len(before):]  # "\n" closes the assistant turn, as the template writes it


def _assistant_message(text: str, tools, call_ids: Iterator[str], *, model_opens_think: bool = False):
    reasoning, sep, rest = text.partition("</think>")
    if not sep:
        reasoning, rest = "", text
    if model_opens_think:  # enable_thinking="model": the prompt stopped before <think>, the model wrote it
        reasoning = reasoning.lstrip().removeprefix("<think>")
    content, calls = parse_tool_calls(rest.lstrip("\n"), tools)
    msg = {"role": "assistant", "content": content.strip(), "reasoning_content": reasoning.strip()}
    if calls and all(isinstance(c, ToolCall) for c in calls):
        msg["tool_calls"] = [{"id": next(call_ids), "type": "function",
                              "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    elif calls:  # a malformed call has no faithful tool_calls entry: keep the raw text
        msg["content"] = rest.strip()
    return msg, calls


class Rollout:
    """Runs tasks through an engine; iterate `run(tasks)` for finished records (in finishing order).

    engine: `a1jax.rollout.Engine` (or anything with its row interface); make_env(task) -> Environment.
    A task is a trajectory-schema record prefix: messages (up to the first query), tools, domain, id, metadata."""

    def __init__(self, engine, tokenizer, make_env: Callable[[dict], Environment],
                 cfg: RolloutConfig = RolloutConfig()):
        self.engine, self.tok, self.make_env, self.cfg = engine, tokenizer, make_env, cfg
        self.stop_ids = set(tokenizer.stop_ids)
        self.im_end = tokenizer.token_id("<|im_end|>")
        self._calls = 0

    def _call_ids(self) -> Iterator[str]:
        while True:
            self._calls += 1
            yield f"call_{self._calls}"

    def _start(self, task: dict) -> _Row:
        row = _Row(task=task, env=self.make_env(task), messages=[dict(m) for m in task["messages"]],
                   started=time.perf_counter())
        text = render(task["messages"], task.get("tools"), add_generation_prompt=True,
                      enable_thinking=self.cfg.enable_thinking)
        row.pending = self.tok.encode(text)
        return row

    def _chunk(self, row: _Row) -> list:
        return row.pending if row.in_cache else row.ids + row.pending

    def _schedule(self, rows: dict[int, _Row]) -> list[int]:
        """Rows that fit the cache with room for a full turn; empties the cache when none fits."""
        eng = self.engine
        for attempt in range(2):
            chosen = []
            for r in sorted(rows):
                trial = {s: len(self._chunk(rows[s])) for s in chosen + [r]}
                if eng.index + eng.slots_needed(trial) + eng.max_new_tokens <= eng.max_len:
                    chosen.append(r)
            if chosen or attempt:
                return chosen
            eng.reset()
            for row in rows.values():
                row.in_cache = False
        return []

    def run(self, tasks: Iterable[dict]) -> Iterator[dict]:
        eng, queue = self.engine, iter(tasks)
        rows: dict[int, _Row] = {}
        exhausted = False
        call_ids = self._call_ids()
        while True:
            for r in range(eng.B):
                if r not in rows and not exhausted:
                    task = next(queue, None)
                    if task is None:
                        exhausted = True
                    else:
                        rows[r] = self._start(task)
            if not rows:
                return
            chosen = self._schedule(rows)
            if not chosen:  # a single trajectory longer than the whole cache
                r = min(rows)
                yield self._finish(rows.pop(r), "context")
                continue
            t0 = time.perf_counter()
            for r in chosen:
                if not rows[r].in_cache:
                    eng.start_row(r)
            eng.extend({r: self._chunk(rows[r]) for r in chosen})
            for r in chosen:
                row = rows[r]
                n = len(row.pending)
                row.ids += row.pending
                row.mask += [0] * n
                row.logp += [0.0] * n
                row.logp_t1 += [0.0] * n
                row.pending, row.in_cache = [], True
            t1 = time.perf_counter()
            budget = {r: max(0, self.cfg.max_tokens - len(rows[r].ids)) for r in chosen}
            gen = eng.generate(chosen, budget=budget)
            t2 = time.perf_counter()
            for r in chosen:
                reason = self._after_turn(rows[r], gen[r], t1 - t0, t2 - t1, call_ids)
                if reason:
                    yield self._finish(rows.pop(r), reason)

    def _after_turn(self, row: _Row, out: dict, prefill_s: float, generate_s: float, call_ids) -> str | None:
        """Records one generation and sets up the next turn; returns a termination reason or None."""
        toks = out["tokens"]
        row.ids += toks
        row.mask += [1] * len(toks)
        row.logp += out["logprobs"]
        row.logp_t1 += out["logprobs_t1"]
        turn = {"prefill_s": prefill_s, "generate_s": generate_s, "env_s": 0.0, "new_tokens": len(toks),
                "finish_reason": out["finish_reason"]}
        row.turns.append(turn)
        text = self.tok.decode([t for t in toks if t not in self.stop_ids])
        msg, calls = _assistant_message(text, row.task.get("tools"), call_ids,
                                        model_opens_think=self.cfg.enable_thinking == "model")
        row.messages.append(msg)
        if out["finish_reason"] == "context":
            return "context"
        if out["finish_reason"] == "length":
            return "token_budget" if len(row.ids) >= self.cfg.max_tokens else "max_new_tokens"
        if not calls:
            return "forced_final_answer" if row.forced else "final_answer"
        if row.forced:
            return "token_budget"
        if len(row.turns) >= self.cfg.max_turns:
            return "max_turns"
        t0 = time.perf_counter()
        good = [c for c in calls if isinstance(c, ToolCall)]
        results = iter(row.env.step(good) if good else [])
        observations = []
        for c in calls:
            if isinstance(c, ToolCallError):
                row.malformed[c.kind] = row.malformed.get(c.kind, 0) + 1
                observations.append(c.message)
            else:
                observations.append(next(results))
        turn["env_s"] = time.perf_counter() - t0
        if "tool_calls" in msg:
            new = [{"role": "tool", "tool_call_id": tc["id"], "content": o}
                   for tc, o in zip(msg["tool_calls"], observations)]
        else:  # the template renders this user turn exactly as it renders tool messages
            new = [{"role": "user", "content": "\n".join(f"<tool_response>\n{o}\n</tool_response>"
                                                         for o in observations)}]
        # A turn cut by a stop string has no <|im_end|> of the model's: the loop closes it (unsupervised).
        close = [] if toks and toks[-1] in self.stop_ids else [self.im_end]
        pending = close + self.tok.encode(_suffix(new, enable_thinking=self.cfg.enable_thinking))
        # Switch to the forced answer while it still fits with a full turn after it.
        forced = new + [{"role": "user", "content": self.cfg.forced_final_message}]
        forced_pending = close + self.tok.encode(_suffix(forced, enable_thinking=self.cfg.enable_thinking))
        if len(row.ids) + len(forced_pending) + self.engine.max_new_tokens > self.cfg.max_tokens:
            if len(row.ids) + len(forced_pending) >= self.cfg.max_tokens:
                row.messages += new
                return "token_budget"
            new, pending, row.forced = forced, forced_pending, True
        row.messages += new
        row.pending = pending
        return None

    def _finish(self, row: _Row, termination: str) -> dict:
        t = row.task
        return {"id": t.get("id"), "source": "rollout", "domain": t.get("domain"), "tools": t.get("tools") or [],
                "messages": row.messages, "metadata": dict(t.get("metadata") or {}),
                "token_ids": row.ids, "loss_mask": row.mask, "behaviour_logprobs": row.logp,
                "logprobs_t1": row.logp_t1, "turns": row.turns, "termination": termination,
                "malformed_tool_calls": dict(row.malformed), "wall_s": time.perf_counter() - row.started}
