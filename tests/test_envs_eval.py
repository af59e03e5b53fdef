"""The evaluation harness: a scripted policy that replays the expert scores 1.0 through the real rollout loop, tool-call
parser and verifiers; `a1jax eval` runs end to end on a tiny random model and writes eval.json, trajectories and
TensorBoard scalars; offline web-search sets are skipped with a reason; bad flags are clear errors."""
import glob
import json

import jax
import pytest

from a1jax import envs
from a1jax import model as M
from a1jax.cli import main
from a1jax.data.chat import render
from a1jax.data.tokenizers import load
from a1jax.envs.evaluate import evaluate_engine, summarize

MY_DOMAINS = ["engineering", "science", "scientific_agents", "search"]


@pytest.fixture(scope="module")
def tok():
    return load("qwen3_5")


def _turn_text(message):
    """An assistant message as the model writes it (the template's rendering, without <|im_end|>)."""
    text = render([{"role": "user", "content": "."}, message])
    return text[text.rindex("<|im_start|>assistant\n") + len("<|im_start|>assistant\n"):].removesuffix("<|im_end|>\n")


def _query(record):
    return [m for m in record["messages"] if m["role"] == "user"][0]["content"]


class ExpertEngine:
    """The Engine's row interface, writing each task's expert turns (found by the task's query in the prompt)."""

    def __init__(self, tok, experts, batch_size=3):
        self.tok, self.B, self.max_len, self.max_new_tokens = tok, batch_size, 10**9, 4096
        self.im_end = tok.token_id("<|im_end|>")
        self.turns = {_query(rec): [_turn_text(m) for m in rec["messages"] if m["role"] == "assistant"]
                      for rec in experts}
        self.reset()

    def reset(self):
        self.index, self.seen, self.replies = 0, {}, {}

    def start_row(self, r):
        self.seen[r], self.replies[r] = [], None

    def slots_needed(self, lengths):
        return max(lengths.values(), default=0)

    def extend(self, chunks):
        for r, ids in chunks.items():
            self.seen[r] += ids
            if self.replies[r] is None:
                text = self.tok.decode(self.seen[r])
                self.replies[r] = iter(self.turns[max((k for k in self.turns if k in text), key=len)])

    def generate(self, rows, budget=None):
        out = {}
        for r in rows:
            ids = self.tok.encode(next(self.replies[r])) + [self.im_end]
            self.seen[r] += ids
            out[r] = {"tokens": ids, "logprobs": [0.0] * len(ids), "logprobs_t1": [0.0] * len(ids),
                      "finish_reason": "stop"}
        return out


def test_a_policy_replaying_the_expert_scores_one_through_the_rollout_loop(tok, tmp_path):
    from a1jax.envs.evaluate import collect_tasks
    tasks, env_of, skipped = collect_tasks(MY_DOMAINS, n=2, horizons=(1, 3), seed=0)
    assert not skipped and len(tasks) == 16
    experts = [env_of[t.id].solve(t) for t in tasks]
    result = evaluate_engine(ExpertEngine(tok, experts), tok, domains=MY_DOMAINS, n=2, horizons=(1, 3),
                             out_dir=str(tmp_path))
    for domain in MY_DOMAINS:
        s = result["domains"][domain]
        assert s["n"] == 4 and s["success_rate"] == 1.0 and s["mean_reward"] == 1.0, result["trajectories"]
        assert s["by_horizon"] == {"1": {"n": 2, "success_rate": 1.0, "mean_reward": 1.0},
                                   "3": {"n": 2, "success_rate": 1.0, "mean_reward": 1.0}}
        assert s["mean_turns"] == 3.0 and s["mean_tokens"] > 100  # (1 + 3) / 2 calls + 1 answer turn
    # the tool results the policy saw are the ones the expert recorded
    recs = {json.loads(line)["id"]: json.loads(line) for line in open(tmp_path / "trajectories.jsonl")}
    for task, expert in zip(tasks, experts):
        got = [m["content"] for m in recs[task.id]["messages"] if m["role"] == "tool"]
        assert got == [m["content"] for m in expert["messages"] if m["role"] == "tool"]


def test_every_registered_domain_scores_one_when_the_policy_replays_its_expert(tok):
    from a1jax.envs.evaluate import collect_tasks
    others = [d for d in envs.registry.BUILTINS if d not in MY_DOMAINS]  # helper B's domains, where present
    tasks, env_of, skipped = collect_tasks(others, n=2, horizons=(1, 3), seed=0)
    experts = [env_of[t.id].solve(t) for t in tasks]
    result = evaluate_engine(ExpertEngine(tok, experts), tok, domains=others, n=2, horizons=(1, 3))
    assert set(result["domains"]) | set(skipped) == set(others)
    for domain, s in result["domains"].items():
        assert s["success_rate"] == 1.0, [r for r in result["trajectories"] if not r["success"]]


def test_summary_separates_domains_and_horizons():
    rows = [{"domain": "a", "horizon": 1, "success": True, "reward": 1.0, "turns": 2, "tokens": 10},
            {"domain": "a", "horizon": 2, "success": False, "reward": 0.5, "turns": 4, "tokens": 30},
            {"domain": "b", "horizon": 1, "success": False, "reward": 0.0, "turns": 1, "tokens": 5}]
    s = summarize(rows)
    assert s["a"]["success_rate"] == 0.5 and s["a"]["mean_reward"] == 0.75 and s["a"]["mean_tokens"] == 20
    assert s["a"]["by_horizon"]["2"] == {"n": 1, "success_rate": 0.0, "mean_reward": 0.5}
    assert s["b"]["n"] == 1 and s["b"]["success_rate"] == 0.0


@pytest.fixture(scope="module")
def ckpt_and_config(tmp_path_factory):
    from a1jax.convert import save_params
    cfg = M.presets.get("tiny", vocab_size=248320, hidden_size=32, num_hidden_layers=2)
    d = tmp_path_factory.mktemp("eval_ckpt")
    save_params(str(d / "ckpt"), cfg, M.init(cfg, jax.random.PRNGKey(0)))
    (d / "exp.py").write_text(
        "import ml_collections\n\ndef get_config(arg=''):\n    c = ml_collections.ConfigDict()\n"
        "    c.model = ml_collections.ConfigDict(dict(preset='tiny'))\n"
        "    c.data = ml_collections.ConfigDict(dict(tokenizer='qwen3_5'))\n"
        "    c.envs_eval = ml_collections.ConfigDict(dict(max_turns=2, n=1))\n    return c\n")
    return str(d / "ckpt"), str(d / "exp.py")


def test_eval_cli_end_to_end_on_a_tiny_random_model(ckpt_and_config, tmp_path, capsys):
    ckpt, exp = ckpt_and_config
    out = tmp_path / "eval"
    assert main(["eval", "--config", exp, "--checkpoint", ckpt, "--domains", "search", "--horizons", "1,2",
                 "--out", str(out), "--batch-size", "2", "--max-len", "1024", "--max-new-tokens", "4",
                 "--temperature", "1.0", "--web-evals", "seal-0"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert set(result["domains"]) == {"search"}
    s = result["domains"]["search"]
    assert s["n"] == 2 and set(s["by_horizon"]) == {"1", "2"}
    assert 0.0 <= s["success_rate"] <= 1.0 and 1 <= s["mean_turns"] <= 2 and s["mean_tokens"] > 400
    assert [r["task_id"].split("/")[3] for r in result["trajectories"]] == ["h1", "h2"]
    assert "search backend" in result["skipped"]["seal-0"]
    assert len((out / "trajectories.jsonl").read_text().splitlines()) == 2
    assert glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "eval/search/success_rate" in metrics and "eval/search/success_h2" in metrics
    table = capsys.readouterr().out
    assert "search" in table and "seal-0" in table and "skipped" in table


def test_evaluate_function_for_trainers_logs_scalars_at_the_given_step(ckpt_and_config):
    from a1jax.envs.evaluate import evaluate
    from a1jax.rollout.agent import RolloutConfig
    from a1jax.train.checkpoint import load_model

    class Writer:
        def __init__(self):
            self.logged = []

        def scalars(self, step, scalars):
            self.logged.append((step, scalars))

    cfg, params = load_model(ckpt_and_config[0])
    writer = Writer()
    result = evaluate(params, cfg, domains=["search"], n=1, horizons=(1,), batch_size=2, max_len=1024,
                      max_new_tokens=4, rollout_cfg=RolloutConfig(max_turns=2), writer=writer, step=123)
    assert result["domains"]["search"]["n"] == 1 and result["step"] == 123
    [(step, scalars)] = writer.logged
    assert step == 123 and scalars["eval/search/success_h1"] == result["domains"]["search"]["success_rate"]


@pytest.mark.parametrize("flags, message", [
    (["--domains", "search,nope"], "unknown domain(s) ['nope']"),
    (["--horizons", "1,x"], "--horizons='1,x'"),
    (["--n", "0"], "--n=0"),
    (["--web-evals", "imaginary"], "unknown set(s) ['imaginary']"),
    (["--thinking", "maybe"], "--thinking='maybe': expected one of ['model', 'off', 'on']"),
])
def test_eval_cli_reports_bad_flags(ckpt_and_config, flags, message, capsys):
    ckpt, exp = ckpt_and_config
    assert main(["eval", "--config", exp, "--checkpoint", ckpt, "--max-new-tokens", "2", *flags]) == 2
    assert message in capsys.readouterr().err


def test_web_sets_are_skipped_offline_and_never_scored():
    from a1jax.envs.evaluate import collect_tasks
    tasks, _, skipped = collect_tasks([], n=3, horizons=(1,), seed=0, web_evals=("browsecomp", "xbench"),
                                      web_dir="/nonexistent")
    assert tasks == [] and set(skipped) == {"browsecomp", "xbench"}
    assert all("search backend" in why for why in skipped.values())


def test_unknown_or_unavailable_domains_are_skipped_with_the_reason(monkeypatch):
    from a1jax.envs.evaluate import collect_tasks
    monkeypatch.setattr(envs.registry, "_FACTORIES", dict(envs.registry._FACTORIES))  # undone after the test

    @envs.register("test_broken")
    def make():
        raise ValueError("broken on purpose")
    tasks, _, skipped = collect_tasks(["test_broken", "science"], n=1, horizons=(1,), seed=0)
    assert [t.domain for t in tasks] == ["science"] and skipped == {"test_broken": "broken on purpose"}


def test_web_sets_run_as_search_tasks_when_a_backend_is_given(tmp_path):
    from a1jax.envs.base import Session
    from a1jax.envs.evaluate import WEB_EVALS, collect_tasks
    from a1jax.rollout.toolcalls import ToolCall

    class Backend:
        def search(self, query):
            return [{"doc_id": "u1", "title": "Result", "snippet": "The capital is Paris."}]

        def open(self, doc_id):
            return "full page"

    rows = [{"task_id": "q1", "question": "Capital of France?", "answer": "Paris"},
            {"task_id": "q2", "question": "2+2?", "answer": "4"}]
    (tmp_path / WEB_EVALS["seal-0"]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks, env_of, skipped = collect_tasks([], n=5, horizons=(1,), seed=0, web_evals=("seal-0",),
                                           web_dir=str(tmp_path), search_backend=Backend())
    assert not skipped and [t.id for t in tasks] == ["seal-0/q1", "seal-0/q2"]
    env = env_of["seal-0/q1"]
    assert Session(env, tasks[0]).step([ToolCall("search", {"query": "capital"})]) == [
        "1. [u1] Result\n   The capital is Paris."]
    answer = {"messages": [{"role": "assistant", "content": "Answer: paris."}]}
    assert env.verify(tasks[0], answer).success and not env.verify(tasks[1], answer).success
