"""Domain "tool_calling": stateful mock APIs (bank, inventory, calendar, travel) and requests that need 1..H calls.

The world state is a plain JSON-able dict; `step` copies it, runs the calls in order, and returns the new state, so
one environment serves any number of episodes. A request is a list of subtasks over disjoint entities (so their
order does not matter), each one call ("deposit 40 into erin's account") or two dependent calls ("move half of
bob's balance to carol": read, then write), optionally ending with a question about the final state.

The expert makes every independent call of a turn in parallel: turn 1 holds the one-call subtasks and the reads of
the dependent ones, turn 2 the dependent writes, the last turn the question's read. The horizon is the number of
calls it makes.

`verify` never trusts the live episode: it replays the trajectory's tool calls, in order, on a fresh copy of the
task's initial state and compares the final state with the expected one; a question's answer must also match (the
last number in the final message). Failed calls (errors) change nothing, so a corrected retry still passes; an
extra write does not. BFCL tasks (bfcl.py) also run here: nothing executes and `verify` applies the AST matcher to
all of the trajectory's calls.
"""
from __future__ import annotations

import copy
import json
import random
from typing import Callable, Iterator, Sequence

from a1jax.data.schema import RecordError, parse_arguments, tool_call_function
from a1jax.envs.base import Session, StepResult, Task, Verdict, final_answer
from a1jax.envs.registry import register
from a1jax.envs.tools import (Tool, ToolError, answer_text, call_tool, check_request, dumps, last_number, rng_for,
                               split_of)
from a1jax.rollout.toolcalls import ToolCall

NAME = "tool_calling"
MAX_HORIZON = 8
ACCOUNTS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
ITEMS = ["widgets", "bolts", "gears", "cables", "lamps", "valves", "hinges", "springs"]
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Seoul", "Nairobi"]
EVENTS = ["standup", "dentist", "design review", "yoga class", "budget meeting", "team lunch", "one-on-one"]
DATES = [f"2025-{m:02d}-{d:02d}" for m in (3, 4, 5) for d in (3, 9, 14, 21, 27)]


# ------------------------------------------------------------------------------------------------ the mock APIs
def _tools(state: dict) -> dict[str, Tool]:
    """The tools, bound to `state` (mutated in place: callers pass a copy)."""
    bank, stock, events, bookings = state["accounts"], state["stock"], state["events"], state["bookings"]

    def account(name):
        if name not in bank:
            raise ToolError(f"no account {name!r}; accounts: {', '.join(sorted(bank))}")
        return name

    def positive(amount, what="amount"):
        if amount <= 0:
            raise ToolError(f"{what} must be positive, got {amount}")
        return amount

    def item(name):
        if name not in stock:
            raise ToolError(f"unknown item {name!r}; items: {', '.join(sorted(stock))}")
        return name

    def get_balance(account_name):
        return dumps({"account": account(account_name), "balance": bank[account_name]})

    def deposit(account_name, amount):
        bank[account(account_name)] += positive(amount)
        return dumps({"account": account_name, "balance": bank[account_name]})

    def transfer(from_account, to_account, amount):
        account(from_account), account(to_account), positive(amount)
        if from_account == to_account:
            raise ToolError("from_account and to_account must differ")
        if bank[from_account] < amount:
            raise ToolError(f"insufficient funds: {from_account} has {bank[from_account]}, asked {amount}")
        bank[from_account] -= amount
        bank[to_account] += amount
        return dumps({"from": from_account, "to": to_account, "amount": amount, "status": "done"})

    def get_stock(item_name):
        return dumps({"item": item(item_name), "quantity": stock[item_name]})

    def add_stock(item_name, quantity):
        stock[item(item_name)] += positive(quantity, "quantity")
        return dumps({"item": item_name, "quantity": stock[item_name]})

    def remove_stock(item_name, quantity):
        item(item_name), positive(quantity, "quantity")
        if stock[item_name] < quantity:
            raise ToolError(f"only {stock[item_name]} {item_name} in stock, asked to remove {quantity}")
        stock[item_name] -= quantity
        return dumps({"item": item_name, "quantity": stock[item_name]})

    def create_event(title, date):
        if any(e["title"] == title for e in events):
            raise ToolError(f"an event titled {title!r} already exists")
        events.append({"title": title, "date": date})
        return dumps({"created": title, "date": date})

    def cancel_event(title):
        found = [e for e in events if e["title"] == title]
        if not found:
            raise ToolError(f"no event titled {title!r}")
        events.remove(found[0])
        return dumps({"cancelled": title})

    def list_events(date):
        return dumps([e["title"] for e in events if e["date"] == date])

    def book_flight(passenger, origin, destination, date):
        if origin == destination:
            raise ToolError("origin and destination must differ")
        booking = f"BK{len(bookings) + 1:03d}"
        bookings.append({"id": booking, "passenger": passenger, "origin": origin, "destination": destination,
                         "date": date})
        return dumps({"booking_id": booking})

    s, i = "string", "integer"
    specs = [
        ("get_balance", "Current balance of a bank account.", {"account_name": (s, "account holder")}, get_balance),
        ("deposit", "Deposit money into an account.", {"account_name": (s, "account holder"),
                                                        "amount": (i, "whole dollars, > 0")}, deposit),
        ("transfer", "Move money between two accounts.", {"from_account": (s, "payer"), "to_account": (s, "payee"),
                                                          "amount": (i, "whole dollars, > 0")}, transfer),
        ("get_stock", "Units of an item in the warehouse.", {"item_name": (s, "item")}, get_stock),
        ("add_stock", "Receive units of an item.", {"item_name": (s, "item"), "quantity": (i, "units, > 0")},
         add_stock),
        ("remove_stock", "Ship units of an item.", {"item_name": (s, "item"), "quantity": (i, "units, > 0")},
         remove_stock),
        ("create_event", "Add a calendar event.", {"title": (s, "event title"), "date": (s, "YYYY-MM-DD")},
         create_event),
        ("cancel_event", "Remove a calendar event by title.", {"title": (s, "event title")}, cancel_event),
        ("list_events", "Titles of the events on a date.", {"date": (s, "YYYY-MM-DD")}, list_events),
        ("book_flight", "Book a one-way flight.", {"passenger": (s, "passenger name"), "origin": (s, "city"),
                                                  "destination": (s, "city"), "date": (s, "YYYY-MM-DD")},
         book_flight),
    ]
    return {name: Tool(name, desc, params, fn) for name, desc, params, fn in specs}


TOOL_SCHEMAS = [t.schema() for t in _tools({"accounts": {}, "stock": {}, "events": [], "bookings": []}).values()]


def run_calls(state: dict, calls: Sequence[ToolCall]) -> tuple[dict, list[str]]:
    """(new state, one result string per call); `state` is not modified."""
    state = copy.deepcopy(state)
    tools = _tools(state)
    return state, [call_tool(tools, c) for c in calls]


# ------------------------------------------------------------------------------------------------ task generation
# A subtask: (request text, [turn-1 calls], follow-up: state -> [turn-2 calls] or None). Entities are drawn without
# replacement, so subtasks never touch the same account, item, event or passenger.
def _subtasks(rng: random.Random, state: dict, pools: dict, name: Callable[[str], str] = str
              ) -> dict[str, tuple[int, Callable]]:
    take = lambda pool: pools[pool].pop()  # noqa: E731
    event = (lambda t: f"'{t}'") if name is str else name  # noqa: E731
    bank, stock = state["accounts"], state["stock"]

    def deposit():
        a, amt = take("accounts"), rng.randint(1, 20) * 10
        return (f"deposit {amt} dollars into {name(a)}'s account",
                [ToolCall("deposit", {"account_name": a, "amount": amt})], None)

    def transfer():
        a, b = take("accounts"), take("accounts")
        amt = rng.randint(1, bank[a] // 10) * 10 if bank[a] >= 10 else bank[a]
        return (f"send {amt} dollars from {name(a)} to {name(b)}",
                [ToolCall("transfer", {"from_account": a, "to_account": b, "amount": amt})], None)

    def restock():
        it, q = take("items"), rng.randint(5, 50)
        return f"receive {q} {name(it)}", [ToolCall("add_stock", {"item_name": it, "quantity": q})], None

    def ship():
        it = take("items")
        q = rng.randint(1, max(stock[it], 1))
        return f"ship {q} {name(it)}", [ToolCall("remove_stock", {"item_name": it, "quantity": q})], None

    def schedule():
        title, date = take("new_events"), rng.choice(DATES)
        return (f"put {event(title)} on my calendar for {date}",
                [ToolCall("create_event", {"title": title, "date": date})], None)

    def cancel():
        title = take("old_events")
        return f"cancel my {event(title)} event", [ToolCall("cancel_event", {"title": title})], None

    def fly():
        who, (a, b), date = take("passengers"), rng.sample(CITIES, 2), rng.choice(DATES)
        return (f"book a flight for {name(who)} from {name(a)} to {name(b)} on {date}",
                [ToolCall("book_flight", {"passenger": who, "origin": a, "destination": b, "date": date})], None)

    def half_balance():  # dependent: the amount is only known after reading the balance
        a, b = take("accounts"), take("accounts")
        def then(s):
            return [ToolCall("transfer", {"from_account": a, "to_account": b, "amount": s["accounts"][a] // 2})]
        return (f"move half of {name(a)}'s balance (rounded down to whole dollars) to {name(b)}",
                [ToolCall("get_balance", {"account_name": a})], then)

    def top_up():  # dependent: add exactly what is missing to reach the target
        it, target = take("items"), rng.randint(9, 12) * 10
        def then(s):
            return [ToolCall("add_stock", {"item_name": it, "quantity": target - s["stock"][it]})]
        return (f"bring our {name(it)} stock up to exactly {target} units", [ToolCall("get_stock", {"item_name": it})],
                then)

    return {"deposit": (1, deposit), "transfer": (1, transfer), "restock": (1, restock), "ship": (1, ship),
            "schedule": (1, schedule), "cancel": (1, cancel), "fly": (1, fly), "half_balance": (2, half_balance),
            "top_up": (2, top_up)}


_NEEDS = {"deposit": {"accounts": 1}, "transfer": {"accounts": 2}, "half_balance": {"accounts": 2},
          "restock": {"items": 1}, "ship": {"items": 1}, "top_up": {"items": 1}, "schedule": {"new_events": 1},
          "cancel": {"old_events": 1}, "fly": {"passengers": 1}}


def _initial_state(rng: random.Random) -> dict:
    old = rng.sample(EVENTS, 3)
    return {"accounts": {a: rng.randint(10, 100) * 10 for a in ACCOUNTS},
            "stock": {it: rng.randint(5, 80) for it in ITEMS},
            "events": [{"title": t, "date": rng.choice(DATES)} for t in old], "bookings": []}


def _draw(rng: random.Random, horizon: int, name: Callable[[str], str] = str) -> dict:
    state = _initial_state(rng)
    pools = {"accounts": rng.sample(ACCOUNTS, len(ACCOUNTS)), "items": rng.sample(ITEMS, len(ITEMS)),
             "passengers": rng.sample([a.title() for a in ACCOUNTS], len(ACCOUNTS)),
             "old_events": [e["title"] for e in state["events"]],
             "new_events": [e for e in EVENTS if e not in {x["title"] for x in state["events"]}]}
    kinds = _subtasks(rng, state, pools, name)
    ask = horizon >= 2 and rng.random() < 0.4  # end with a question (one more read)
    budget, parts, touched = horizon - ask, [], []
    while budget > 0:
        fits = [k for k, (cost, _) in kinds.items() if cost <= budget
                and all(len(pools[p]) >= n for p, n in _NEEDS[k].items())]
        kind = rng.choice(fits)
        cost, make = kinds[kind]
        text, first, then = make()
        parts.append((text, first, then))
        touched += [c.arguments.get("account_name") or c.arguments.get("from_account") for c in first
                    if c.name in ("deposit", "transfer", "get_balance")]
        budget -= cost
    question = None
    if ask:
        if touched:
            question = ("balance", rng.choice(touched))
        else:
            question = ("balance", pools["accounts"].pop())
    return {"state": state, "parts": parts, "question": question}


def _expert_turns(draw: dict) -> list[list[ToolCall]]:
    """The calls, grouped by turn, and the state they lead to."""
    state = draw["state"]
    first = [c for _, calls, _ in draw["parts"] for c in calls]
    turns = [first]
    state, _ = run_calls(state, first)
    second = [c for _, _, then in draw["parts"] if then for c in then(state)]
    if second:
        turns.append(second)
    if draw["question"]:
        turns.append([ToolCall("get_balance", {"account_name": draw["question"][1]})])
    return turns


def _prompt(draw: dict, name: Callable[[str], str] = str) -> str:
    steps = [text for text, _, _ in draw["parts"]]
    lines = ["Please take care of the following using the tools:"] + [f"{i + 1}. {s}." for i, s in enumerate(steps)]
    if draw["question"]:
        lines.append(f"When everything is done, tell me {name(draw['question'][1])}'s final balance in dollars.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the environment
def trajectory_calls(trajectory: dict) -> list[ToolCall]:
    """Every tool call of every assistant message, in order (unparseable arguments become {})."""
    calls = []
    for m in trajectory.get("messages", []):
        for call in (m.get("tool_calls") or []) if m.get("role") == "assistant" else []:
            try:
                fn = tool_call_function(call)
                calls.append(ToolCall(str(fn.get("name")), parse_arguments(fn.get("arguments", {}))))
            except RecordError:  # executed as a call with a bad argument, so it fails like the live episode did
                fn = call.get("function") if isinstance(call, dict) else None
                calls.append(ToolCall(str((fn or {}).get("name")), {"__unparseable__": True}))
    return calls


def _is_bfcl(task: Task) -> bool:
    """BFCL tasks (a1jax/envs/bfcl.py `bfcl_tasks`) share this domain: their answer is the AST ground truth."""
    return "ground_truth" in task.answer


# The API each tool belongs to; tool_set="apis" lists only the APIs a task's requests use.
APIS = {"get_balance": "bank", "deposit": "bank", "transfer": "bank", "get_stock": "inventory",
        "add_stock": "inventory", "remove_stock": "inventory", "create_event": "calendar",
        "cancel_event": "calendar", "list_events": "calendar", "book_flight": "travel"}
TOOL_SETS = ("all", "apis")
# How a request names the accounts, items, events, passengers and cities it is about: plain, in double quotes
# ('ship 17 "gears"') or in backticks ('ship 17 `gears`'). After ' "' or ' `' the tokenizer splits a value exactly as in
# the call's "<parameter=item_name>\ngears\n", so the argument is a copy of the request's tokens. Plain, ' gears' is
# one token and the argument's 'gears' another two ('g', 'ears'): a model must also learn how every value is spelled.
# Backticks never occur in the tool schemas (JSON, full of ' "'), so they also mark the values unambiguously.
VALUE_STYLES = {"plain": "", "quoted": '"', "code": "`"}


def task_tools(turns, tool_set: str) -> list[dict]:
    """The tool schemas a task shows: all ten, or ("apis") every tool of the APIs its expert calls touch."""
    if tool_set == "all":
        return TOOL_SCHEMAS
    used = {APIS[c.name] for t in turns for c in t}
    return [s for s in TOOL_SCHEMAS if APIS[s["function"]["name"]] in used]


class ToolCalling:
    """tool_set: "all" (every task shows the ten tools, about 1,000 tokens of schema) or "apis" (only the tools of
    the APIs the request touches, e.g. the three bank tools: the model still picks the tool and copies its
    arguments, at a fraction of the prompt; the tiny CPU recipe uses it). values: "plain", "quoted" or "code"
    (VALUE_STYLES: how the request marks the values a call copies; the tiny CPU recipe uses "code")."""
    name = NAME

    def __init__(self, tool_set: str = "all", values: str = "plain"):
        if tool_set not in TOOL_SETS:
            raise ValueError(f"tool_calling: tool_set={tool_set!r}; expected one of {TOOL_SETS}")
        if values not in VALUE_STYLES:
            raise ValueError(f"tool_calling: values={values!r}; expected one of {tuple(VALUE_STYLES)}")
        self.tool_set, self.values = tool_set, values
        mark = VALUE_STYLES[values]
        self._name = (lambda v: f"{mark}{v}{mark}") if mark else str  # how a request writes a value

    def tasks(self, split: str, seed: int, *, n: int, horizon: int | None = None) -> Iterator[Task]:
        check_request(NAME, split, n, horizon, MAX_HORIZON)
        rng = rng_for(NAME, split, seed, horizon)
        i = 0
        while i < n:
            h = horizon if horizon is not None else rng.randint(1, 5)
            draw = _draw(rng, h, self._name)
            prompt = _prompt(draw, self._name)
            if split_of(json.dumps([draw["state"], prompt], sort_keys=True)) != split:
                continue
            turns = _expert_turns(draw)
            final, _ = run_calls(draw["state"], [c for t in turns for c in t])
            answer = {"initial_state": draw["state"], "final_state": final, "question": draw["question"],
                      "expected": final["accounts"][draw["question"][1]] if draw["question"] else None,
                      "turns": [[[c.name, c.arguments] for c in t] for t in turns]}
            tag = "mix" if horizon is None else f"h{horizon}"  # ids unique within (domain, split, seed)
            yield Task(id=f"{NAME}/{split}/s{seed}/{tag}/{i}", domain=NAME,
                       messages=[{"role": "user", "content": prompt}], tools=task_tools(turns, self.tool_set),
                       horizon=sum(len(t) for t in turns), answer=answer,
                       metadata={"turns": len(turns), "parallel": any(len(t) > 1 for t in turns)})
            i += 1

    def reset(self, task: Task) -> dict | None:
        return None if _is_bfcl(task) else copy.deepcopy(task.answer["initial_state"])

    def step(self, state: dict | None, tool_calls: Sequence[ToolCall]) -> StepResult:
        if state is None:  # a BFCL task: the calls are the answer, nothing runs
            return StepResult(results=["Call recorded (BFCL tasks are checked, not executed)."] * len(tool_calls),
                              state=None, done=True)
        state, results = run_calls(state, tool_calls)
        return StepResult(results=results, state=state, done=False)

    def verify(self, task: Task, trajectory: dict) -> Verdict:
        calls = trajectory_calls(trajectory)
        if _is_bfcl(task):
            from a1jax.envs.bfcl import match_entry
            reason = match_entry(task.answer, calls)
            return Verdict(float(reason is None), reason is None, reason or f"{len(calls)} call(s) match the answer")
        final, results = run_calls(task.answer["initial_state"], calls)
        if final != task.answer["final_state"]:
            diff = [k for k in final if final[k] != task.answer["final_state"][k]]
            errors = sum(r.startswith("Error:") for r in results)
            return Verdict(0.0, False, f"final state differs in {', '.join(diff)} after {len(calls)} call(s) "
                                       f"({errors} failed)")
        if task.answer["question"]:
            got = last_number(answer_text(final_answer(trajectory)))
            if got is None or abs(got - task.answer["expected"]) > 1e-6:
                return Verdict(0.0, False, f"state is right but the answer {got} is not {task.answer['expected']}")
        return Verdict(1.0, True, f"final state matches after {len(calls)} call(s)")

    def solve(self, task: Task) -> dict:
        if _is_bfcl(task):
            raise ValueError(f"{task.id}: no expert for BFCL tasks (their answers are checked, not executed)")
        record = task.prompt_record()
        record["metadata"]["expert"] = True
        session, n = Session(self, task), 0
        for turn in task.answer["turns"]:
            calls = [ToolCall(name, args) for name, args in turn]
            ids = [f"call_{n + j + 1}" for j in range(len(calls))]
            n += len(calls)
            record["messages"].append({"role": "assistant", "content": "", "tool_calls": [
                {"id": i, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for i, c in zip(ids, calls)]})
            for i, c, result in zip(ids, calls, session.step(calls)):
                record["messages"].append({"role": "tool", "tool_call_id": i, "name": c.name, "content": result})
        if task.answer["question"]:
            content = f"All done. Answer: {task.answer['expected']}"
        else:
            content = "All done."
        record["messages"].append({"role": "assistant", "content": content})
        return record


@register(NAME)
def make(tool_set: str = "all", values: str = "plain") -> ToolCalling:
    return ToolCalling(tool_set, values)
