"""The four domains of a1jax/envs (search, engineering, science, scientific_agents): the scripted expert solves every
task across horizons, wrong and near-miss answers fail, tasks and tool outputs are deterministic, splits are
disjoint, and the expert's recorded tool results are exactly what `step` returns."""
import itertools

import pytest

from a1jax import envs
from a1jax.data.schema import validate_record
from a1jax.envs.base import Session
from a1jax.rollout.toolcalls import ToolCall

# domain -> (horizon, count) pairs: 100 tasks each, long horizons included where the domain is cheap.
SPREAD = {
    "search": [(1, 30), (8, 30), (50, 20), (None, 20)],
    "science": [(1, 30), (8, 30), (50, 20), (None, 20)],
    "scientific_agents": [(1, 30), (8, 30), (50, 20), (None, 20)],
    "engineering": [(1, 55), (2, 30), (4, 10), (8, 5)],  # every call is a subprocess: 16 and 50 are in the slow test
}


def _tasks(domain, split="test", seed=0):
    env = envs.get(domain)
    return env, [t for h, n in SPREAD[domain] for t in env.tasks(split, seed, n=n, horizon=h)]


def _answer(content):
    return {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}]}


def _replay(env, task, record):
    """Every assistant turn's calls stepped through a fresh Session; returns (replayed, recorded) results."""
    session, replayed, recorded = Session(env, task), [], []
    msgs = record["messages"]
    for i, m in enumerate(msgs):
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [ToolCall(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]]
            replayed += session.step(calls)
            recorded += [x["content"] for x in msgs[i + 1:i + 1 + len(calls)]]
    return replayed, recorded


@pytest.mark.parametrize("domain", sorted(SPREAD))
def test_expert_solves_100_tasks_across_horizons_with_exactly_horizon_calls(domain):
    env, tasks = _tasks(domain)
    assert len(tasks) == 100 and len({t.id for t in tasks}) == 100
    for task in tasks:
        record = env.solve(task)
        validate_record(record)
        verdict = env.verify(task, record)
        assert verdict.success and verdict.reward == 1.0, (task.id, verdict.reason)
        n_calls = sum(len(m.get("tool_calls") or ()) for m in record["messages"])
        assert n_calls == task.horizon
        assert not any(m["content"].startswith("Error") for m in record["messages"] if m["role"] == "tool")
    assert max(t.horizon for t in tasks) >= (8 if domain == "engineering" else 50)


@pytest.mark.parametrize("domain", sorted(SPREAD))
def test_expert_tool_results_equal_a_replay_through_step(domain):
    env, tasks = _tasks(domain, split="train", seed=3)
    for task in tasks[::10]:
        replayed, recorded = _replay(env, task, env.solve(task))
        assert replayed == recorded and len(recorded) == task.horizon


@pytest.mark.parametrize("domain", sorted(SPREAD))
def test_same_seed_same_tasks_and_tool_outputs_other_seed_differs(domain):
    env = envs.get(domain)
    a = list(env.tasks("train", 7, n=5, horizon=2))
    b = list(env.tasks("train", 7, n=5, horizon=2))
    c = list(env.tasks("train", 8, n=5, horizon=2))
    assert [(t.id, t.messages, t.answer) for t in a] == [(t.id, t.messages, t.answer) for t in b]
    assert [t.messages for t in a] != [t.messages for t in c]
    assert env.solve(a[0]) == envs.get(domain).solve(b[0])


@pytest.mark.parametrize("domain", sorted(SPREAD))
def test_train_and_test_tasks_are_disjoint(domain):
    env = envs.get(domain)
    n = 20 if domain == "engineering" else 200
    train = {t.messages[-1]["content"] for t in env.tasks("train", 0, n=n, horizon=2)}
    test = {t.messages[-1]["content"] for t in env.tasks("test", 0, n=n, horizon=2)}
    assert len(train) > n // 2 and len(test) > n // 2
    assert not train & test


@pytest.mark.parametrize("domain", sorted(SPREAD))
def test_empty_and_random_answers_score_zero(domain):
    env = envs.get(domain)
    for task in env.tasks("test", 1, n=5, horizon=2):
        for content in ["", "Answer: 42", "Answer: Alda Vorren", "```python\ndef solve(x):\n    return x\n```"]:
            verdict = env.verify(task, _answer(content))
            assert verdict.reward == 0.0 and not verdict.success, (task.id, content)
        assert env.verify(task, {"messages": task.messages}).reward == 0.0  # no assistant turn at all


def test_search_rejects_a_wrong_entity_and_accepts_normalised_forms():
    env = envs.get("search")
    for task in env.tasks("test", 0, n=10, horizon=4):
        record = env.solve(task)
        # the entity one hop before the answer: read from the expert's last search
        penultimate = record["messages"][-3]["tool_calls"][0]["function"]["arguments"]["query"]
        assert not env.verify(task, _answer(f"Answer: {penultimate}")).success
        assert env.verify(task, _answer(f"I searched a lot.\nAnswer:  {task.answer.upper()}!! ")).success
        assert not env.verify(task, _answer(f"Answer: {task.answer} and {penultimate}")).success


def test_search_world_option_draws_every_seeds_tasks_from_one_knowledge_base():
    """search's `world` option (a1jax/envs/search.py, WORLD_NOTE): each seed draws other chains of the same world,
    solvable there; without it a seed is its own world; world=W at seed W is the default's tasks, ids included."""
    from a1jax.envs import search
    fixed, free = envs.get("search", world="0"), envs.get("search")  # the CLI's `--option world=0` is text
    names = {e["name"] for e in search.world(0)["entities"]}
    drawn = [t for seed in (3, 4) for t in fixed.tasks("train", seed, n=6, horizon=2)]
    assert {t.metadata["world_seed"] for t in drawn} == {0} and len({t.id for t in drawn}) == 12
    assert all(t.answer in names and fixed.verify(t, fixed.solve(t)).success for t in drawn)
    assert all("/s3w0/" in t.id for t in drawn[:6])
    other = list(free.tasks("train", 3, n=6, horizon=2))
    assert {t.metadata["world_seed"] for t in other} == {3}
    assert [t.messages for t in other] != [t.messages for t in drawn[:6]]  # the same draws, another world's names
    same = list(fixed.tasks("test", 0, n=4, horizon=2)), list(free.tasks("test", 0, n=4, horizon=2))
    assert [(t.id, t.messages, t.answer) for t in same[0]] == [(t.id, t.messages, t.answer) for t in same[1]]
    with pytest.raises(ValueError, match=r"search option world='x': expected an integer"):
        envs.get("search", world="x")


@pytest.mark.parametrize("domain", ["science", "scientific_agents"])
def test_numeric_answers_within_tolerance_pass_and_beyond_fail(domain):
    env = envs.get(domain)
    for task in env.tasks("test", 0, n=10, horizon=4):
        want = float(task.answer)
        assert env.verify(task, _answer(f"Answer: {want * (1 + 5e-5)!r}")).success
        assert not env.verify(task, _answer(f"Answer: {want * (1 + 3e-4)!r}")).success
        assert not env.verify(task, _answer(f"Answer: {-want!r}")).success
        assert env.verify(task, _answer(f"The result is {want:,.9f} units")).success  # thousands separators


def test_engineering_rejects_code_that_fails_one_hidden_test():
    env = envs.get("engineering")
    for task in itertools.islice(env.tasks("test", 0, n=6, horizon=2), 3):
        code = env.solve(task)["messages"][-1]["content"].split("```python\n")[1].split("```")[0]
        victim = task.answer[-1][0]
        sneaky = code + f"\n_real = solve\ndef solve(x):\n    return None if x == {victim!r} else _real(x)\n"
        verdict = env.verify(task, _answer(f"```python\n{sneaky}```"))
        n = len(task.answer)
        assert not verdict.success and f"passed {n - 1}/{n}" in verdict.reason
        fake = "print('PASSED all')\nimport sys\nsys.exit(0)\n"
        assert not env.verify(task, _answer(f"```python\n{fake}```")).success
        assert env.verify(task, _answer(f"Fixed:\n```python\n{code}```\nDone.")).success


def test_engineering_fix_tasks_show_buggy_code_that_fails_verification():
    env = envs.get("engineering")
    fixes = [t for t in env.tasks("test", 0, n=30, horizon=3) if t.metadata["family"] == "fix"]
    assert fixes
    for task in fixes[:3]:
        buggy = task.messages[-1]["content"].split("```python\n")[1].split("```")[0]
        assert not env.verify(task, _answer(f"```python\n{buggy}```")).success


@pytest.mark.slow
def test_engineering_expert_at_long_horizons():
    env = envs.get("engineering")
    for h in (16, 50):
        for task in env.tasks("test", 0, n=2, horizon=h):
            record = env.solve(task)
            assert env.verify(task, record).success
            assert sum("tool_calls" in m for m in record["messages"]) == h


def test_search_expert_queries_copy_the_entity_tokens_of_the_context():
    """The expert's query "the REL of NAME" carries NAME as the same token ids as the question or the result it came
    from (' Gal', 'vor'); "NAME REL" would start it with another token ('Gal'), which a small model must learn to
    spell."""
    from a1jax.data import chat, tokenizers
    tok = tokenizers.load("qwen3_5_compact")
    env = envs.get("search")
    checked = 0
    for task in env.tasks("train", 0, n=20, horizon=3):
        record = env.solve(task)
        for i, m in enumerate(record["messages"]):
            for call in m.get("tool_calls") or []:
                query = call["function"]["arguments"]["query"]
                rel, name = query.removeprefix("the ").split(" of ", 1)
                before = tok.encode(chat.render(record["messages"][:i]))
                needle = tok.encode(f"\n{query}\n")[1:-1][-len(tok.encode(f" {name}")):]
                assert needle == tok.encode(f" {name}"), query
                assert any(before[j:j + len(needle)] == needle for j in range(len(before))), (query, task.messages)
                checked += 1
    assert checked == 60
