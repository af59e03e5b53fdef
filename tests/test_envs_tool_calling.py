"""The tool_calling domain (stateful mock APIs, replay verifier) and the BFCL loader + AST matcher."""
import copy

import pytest

from a1jax import envs
from a1jax.data.schema import validate_record
from a1jax.envs import bfcl
from a1jax.envs.tool_calling import MAX_HORIZON, trajectory_calls
from a1jax.rollout.toolcalls import ToolCall


@pytest.fixture(scope="module")
def env():
    return envs.get("tool_calling")


def _assistant_calls(record):
    return [m for m in record["messages"] if m["role"] == "assistant" and m.get("tool_calls")]


def test_expert_scores_one_on_100_tasks_across_horizons_with_parallel_turns(env):
    parallel = 0
    for horizon in (1, 2, 3, 5, 8):
        for task in env.tasks("train", 0, n=20, horizon=horizon):
            record = env.solve(task)
            validate_record(record)
            assert len(trajectory_calls(record)) == task.horizon == horizon
            assert not [m for m in record["messages"] if m["role"] == "tool" and m["content"].startswith("Error")]
            verdict = env.verify(task, record)
            assert verdict.success and verdict.reward == 1.0, (task.messages, verdict)
            parallel += any(len(m["tool_calls"]) > 1 for m in _assistant_calls(record))
    assert parallel >= 50


def test_wrong_call_sequences_fail(env):
    tasks = [t for t in env.tasks("test", 3, n=30, horizon=4)]
    dropped = wrong_value = extra = 0
    for task in tasks:
        record = env.solve(task)
        # 1. drop the last write call
        r = copy.deepcopy(record)
        turns = _assistant_calls(r)
        writes = [(m, c) for m in turns for c in m["tool_calls"]
                  if not c["function"]["name"].startswith(("get_", "list_"))]
        m, c = writes[-1]
        m["tool_calls"].remove(c)
        assert not env.verify(task, r).success
        dropped += 1
        # 2. change an integer argument of a write
        for m, c in writes:
            args = c["function"]["arguments"]
            key = next((k for k in ("amount", "quantity") if k in args), None)
            if key:
                r = copy.deepcopy(record)
                for call in (x for mm in _assistant_calls(r) for x in mm["tool_calls"]):
                    if call["id"] == c["id"]:
                        call["function"]["arguments"][key] -= 1
                assert not env.verify(task, r).success
                wrong_value += 1
                break
        # 3. one extra deposit
        r = copy.deepcopy(record)
        _assistant_calls(r)[-1]["tool_calls"].append(
            {"id": "extra", "type": "function", "function": {"name": "deposit",
                                                             "arguments": {"account_name": "alice", "amount": 5}}})
        assert not env.verify(task, r).success
        extra += 1
    assert dropped == extra == 30 and wrong_value > 10


def test_question_needs_the_right_number_and_failed_calls_change_nothing(env):
    task = next(t for t in env.tasks("train", 5, n=50, horizon=3) if t.answer["question"])
    record = env.solve(task)
    wrong = copy.deepcopy(record)
    wrong["messages"][-1]["content"] = f"Answer: {task.answer['expected'] + 10}"
    v = env.verify(task, wrong)
    assert not v.success and "answer" in v.reason
    # a failing call first (unknown account, then a bad type), then the expert's calls: still correct
    retry = copy.deepcopy(record)
    retry["messages"].insert(1, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "bad1", "type": "function", "function": {"name": "deposit", "arguments": {"account_name": "zed",
                                                                                          "amount": 5}}},
        {"id": "bad2", "type": "function", "function": {"name": "deposit", "arguments": '{"account_name": "bob", '
                                                                                         '"amount": "5"}'}}]})
    assert env.verify(task, retry).success
    state = env.reset(task)
    out = env.step(state, [ToolCall("transfer", {"from_account": "alice", "to_account": "bob", "amount": 10 ** 9})])
    assert out.results[0].startswith("Error: insufficient funds") and out.state == state


def test_tasks_are_deterministic_per_seed(env):
    def key(ts):
        return [(t.messages, t.answer["final_state"]) for t in ts]
    assert key(env.tasks("train", 11, n=10)) == key(env.tasks("train", 11, n=10))
    assert key(env.tasks("train", 11, n=10)) != key(env.tasks("train", 12, n=10))
    with pytest.raises(ValueError, match="horizon"):
        next(env.tasks("train", 0, n=1, horizon=MAX_HORIZON + 1))
    with pytest.raises(ValueError, match="split"):
        next(env.tasks("dev", 0, n=1))


# ------------------------------------------------------------------------------------------------------ BFCL
def _plain(v):
    """A concrete value from a possible answer (nested {key: [allowed]} dicts become plain dicts)."""
    if isinstance(v, dict) and v and all(isinstance(x, list) for x in v.values()):
        return {k: _plain([x for x in vs if x != ""][0]) for k, vs in v.items() if any(x != "" for x in vs)}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _ground_truth_calls(entry):
    docs = {f["name"]: f for f in entry["function"]}
    calls = []
    for answer in entry["ground_truth"]:
        (name, args), = answer.items()
        required = docs[name]["parameters"].get("required", [])
        calls.append(ToolCall(name, {p: _plain([v for v in vals if v != ""][0]) for p, vals in args.items()
                                     if "" not in vals or p in required}))
    return calls


def _python_syntax(calls):
    return "[" + ", ".join(f"{c.name}(" + ", ".join(f"{k}={v!r}" for k, v in c.arguments.items()) + ")"
                           for c in calls) + "]"


# Possible answers that contradict the shipped function doc; BFCL's own checker rejects them too.
DOC_CONFLICTS = {("parallel_multiple_12", "permeability"),  # not a parameter of calculate_voltage_difference
                 ("parallel_multiple_26", "type"),  # not a parameter of bank.calculate_balance
                 ("parallel_multiple_94", None),  # string elements for sort_list's integer array (no valid call)
                 ("simple_python_149", "company_names")}  # [["Apple"], ["Microsoft"]] for an array of strings


@pytest.mark.parametrize("category", bfcl.CATEGORIES)
def test_bfcl_matcher_accepts_every_possible_answer(category):
    entries = bfcl.load_bfcl(category)
    assert len(entries) == {"simple_python": 400, "parallel_multiple": 200}[category]
    failures = set()
    for e in entries:
        calls = _ground_truth_calls(e)
        if bfcl.match_entry(e, calls) or bfcl.match_entry(e, _python_syntax(calls)):
            failures.add((e["id"], None))
            continue
        assert bfcl.match_entry(e, list(reversed(calls))) is None  # order-insensitive
        for k, answer in enumerate(e["ground_truth"]):  # every alternative value, one at a time
            (name, args), = answer.items()
            for p, values in args.items():
                for v in values:
                    if v != "":
                        other = list(calls)
                        other[k] = ToolCall(name, {**calls[k].arguments, p: _plain(v)})
                        if bfcl.match_entry(e, other):
                            failures.add((e["id"], p))
    assert failures == {f for f in DOC_CONFLICTS if f[0].startswith(category)}
    metrics = bfcl.score_bfcl(category, [_ground_truth_calls(e) for e in entries])
    assert metrics["correct"] == len(entries) - sum(f[1] is None for f in failures)


def test_bfcl_matcher_rejects_perturbed_calls():
    simple = {e["id"]: e for e in bfcl.load_bfcl("simple_python")}
    e = simple["simple_python_0"]  # calculate_triangle_area(base=10, height=5, unit optional)
    assert bfcl.match_entry(e, "calculate_triangle_area(base=10, height=5)") is None
    assert bfcl.match_entry(e, "calculate_triangle_area(base=10, height=5, unit='Units')") is None
    assert bfcl.match_entry(e, "calculate_triangle_area(base=11, height=5)").startswith("value")
    assert bfcl.match_entry(e, "calculate_triangle_area(base=10)").startswith("missing_required")
    assert bfcl.match_entry(e, "calculate_area(base=10, height=5)").startswith("unknown_function")
    assert bfcl.match_entry(e, "calculate_triangle_area(base=10.0, height=5)").startswith("type")
    assert bfcl.match_entry(e, "calculate_triangle_area(base=10, height=5, color='red')").startswith("unexpected")
    assert bfcl.match_entry(e, "calculate_triangle_area(10, 5)").startswith("unparseable")
    assert bfcl.match_entry(e, "").startswith("count")
    parallel = {e["id"]: e for e in bfcl.load_bfcl("parallel_multiple")}
    e = parallel["parallel_multiple_1"]  # area_rectangle(length=7.0, breadth=3.0) + area_circle(radius=5.0)
    ok = "[area_circle.calculate(radius=5), area_rectangle.calculate(length=7, breadth=3.0)]"  # int -> float
    assert bfcl.match_entry(e, ok) is None
    assert bfcl.match_entry(e, "[area_rectangle.calculate(length=7, breadth=3)]").startswith("count")
    assert bfcl.match_entry(e, "[area_circle.calculate(radius=5), area_circle.calculate(radius=5)]").startswith(
        "unmatched")
    mixed = [ToolCall("area_circle.calculate", {"radius": 5.0}),
             {"name": "area_rectangle.calculate", "arguments": '{"length": 7, "breadth": 3}'}]
    assert bfcl.match_entry(e, mixed) is None
    assert bfcl.match_entry(e, "[area_circle_calculate(radius=5), area_rectangle_calculate(length=7, breadth=3)]",
                            allow_underscore=True) is None
    # every parallel entry: dropping one call fails
    for e in parallel.values():
        calls = _ground_truth_calls(e)
        if (e["id"], None) not in DOC_CONFLICTS:
            assert bfcl.match_entry(e, calls[:-1]).startswith("count")


def test_bfcl_scoring_and_errors():
    m = bfcl.score_bfcl("simple_python", {"simple_python_0": "calculate_triangle_area(base=10, height=5)"})
    assert m["correct"] == 1 and m["errors"] == {"no_response": 399}
    with pytest.raises(ValueError, match="400 entries"):
        bfcl.score_bfcl("simple_python", ["x"])
    with pytest.raises(ValueError, match="category"):
        bfcl.load_bfcl("live_simple")
    with pytest.raises(FileNotFoundError, match="root="):
        bfcl.load_bfcl("simple_python", root="/nonexistent")
    tasks = bfcl.bfcl_tasks("parallel_multiple")
    assert tasks[0].tools[0]["function"]["parameters"]["type"] == "object"


def test_bfcl_tasks_verify_through_the_tool_calling_domain(env):
    task = bfcl.bfcl_tasks("simple_python")[0]
    out = env.step(env.reset(task), [ToolCall("calculate_triangle_area", {"base": 10, "height": 5})])
    assert out.done

    def record(args):
        return {"messages": task.messages + [{"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "calculate_triangle_area", "arguments": args}}]}]}
    assert env.verify(task, record({"base": 10, "height": 5})).success
    assert not env.verify(task, record({"base": 10, "height": 6})).success


@pytest.mark.parametrize("values", ["quoted", "code"])
def test_marked_values_are_the_same_tokens_in_the_request_and_the_call(values):
    """With values="quoted"/"code" every string argument of the expert's calls is a token-for-token copy of the
    request; plain, most are not (the request's ' gears' is one token, the call's 'gears' two)."""
    from a1jax.data import chat, tokenizers
    tok = tokenizers.load("qwen3_5_compact")

    def uncopied(env):
        """(string arguments whose call tokens do not occur in the request's tokens, string arguments)."""
        missing = total = 0
        for task in env.tasks("train", 0, n=40, horizon=3):
            record = env.solve(task)
            assert env.verify(task, record).success
            request = tok.encode(chat.render(task.messages))
            for call in trajectory_calls(record):
                for value in (v for v in call.arguments.values() if isinstance(v, str)):
                    needle = tok.encode(f"\n{value}\n")[1:-1]  # as the template writes a parameter
                    total += 1
                    missing += not any(request[i:i + len(needle)] == needle for i in range(len(request)))
        return missing, total

    missing, total = uncopied(envs.get("tool_calling", tool_set="apis", values=values))
    assert missing == 0 and total >= 60
    plain_missing, _ = uncopied(envs.get("tool_calling", tool_set="apis"))
    assert plain_missing >= 30


def test_unknown_value_style_is_a_clear_error():
    with pytest.raises(ValueError, match="values='bold'; expected one of"):
        envs.get("tool_calling", values="bold")
