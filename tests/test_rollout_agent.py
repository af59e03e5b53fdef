"""The rollout loop: multi-turn records over a scripted environment, with exact token ids and masks that cover
exactly the model's tokens; malformed calls become observations; continuous batching refills rows; the real engine
runs the same loop end to end."""
import jax
import pytest

from a1jax import model as M
from a1jax.data.chat import render
from a1jax.data.schema import validate_record
from a1jax.data.tokenizers import load
from a1jax.rollout import Engine, SamplingParams
from a1jax.rollout.agent import FORCED_FINAL_MESSAGE, Rollout, RolloutConfig
from a1jax.rollout.environment import ScriptedEnvironment

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a key up.", "parameters": {
    "type": "object", "required": ["key"], "properties": {"key": {"type": "string"}, "n": {"type": "integer"}}}}}]


def _call(key, n=None):
    n_part = f"<parameter=n>\n{n}\n</parameter>\n" if n is not None else ""
    return (f"<think>\nI should look up {key}.\n</think>\n\n<tool_call>\n<function=lookup>\n<parameter=key>\n{key}\n"
            f"</parameter>\n{n_part}</function>\n</tool_call>")


SCRIPTS = {  # first user message -> the assistant turns a scripted policy writes
    "task-a": [_call("alpha", 2), _call("beta"), "<think>\nDone.\n</think>\n\nThe answer is 42."],
    "task-b": ["<think>\nbad\n</think>\n\n<tool_call>\n<function=lookup>\n<parameter=n>\n{x\n</parameter>\n"
               "</function>\n</tool_call>", "<think>\nok\n</think>\n\nNo answer."],
    "task-c": ["<think>\n</think>\n\nImmediately: 7."],
    "task-d": [_call(f"k{i}") for i in range(10)],
}


class ScriptedEngine:
    """The Engine's row interface over scripted replies (no model): isolates the loop's bookkeeping."""

    def __init__(self, tok, batch_size=2, max_len=100_000, max_new_tokens=64, close_turns=True):
        self.tok, self.B, self.max_len, self.max_new_tokens = tok, batch_size, max_len, max_new_tokens
        self.close_turns = close_turns  # False: turns end on a stop string, without <|im_end|>
        self.im_end = tok.token_id("<|im_end|>")
        self.reset()

    def reset(self):
        self.index, self.seen, self.replies = 0, {}, {}

    def start_row(self, r):
        self.seen[r], self.replies[r] = [], None

    def slots_needed(self, lengths):
        return max(lengths.values(), default=0)

    def extend(self, chunks):
        self.index += self.slots_needed({r: len(c) for r, c in chunks.items()})
        for r, ids in chunks.items():
            self.seen[r] += ids
            if self.replies[r] is None:
                text = self.tok.decode(self.seen[r])
                self.replies[r] = iter(next(v for k, v in SCRIPTS.items() if k in text))

    def generate(self, rows, budget=None):
        out = {}
        for r in rows:
            ids = self.tok.encode(next(self.replies[r])) + [self.im_end] * self.close_turns
            self.seen[r] += ids
            out[r] = {"tokens": ids, "logprobs": [-0.5] * len(ids), "logprobs_t1": [-0.7] * len(ids),
                      "finish_reason": "stop"}
        self.index += max(len(out[r]["tokens"]) for r in rows)
        return out


@pytest.fixture(scope="module")
def tok():
    return load("qwen3_5")


def _task(name):
    return {"id": name, "domain": "test", "tools": TOOLS, "metadata": {"k": 1},
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": name}]}


def _env(task):
    return ScriptedEnvironment({"lookup": lambda key, n=1: f"{key}={n}"})


def _check_record(rec, tok, eng_seen=None):
    validate_record({k: rec[k] for k in ("id", "source", "domain", "messages", "tools", "metadata")})
    ids, mask = rec["token_ids"], rec["loss_mask"]
    assert len(ids) == len(mask) == len(rec["behaviour_logprobs"]) == len(rec["logprobs_t1"])
    assert sum(mask) == sum(t["new_tokens"] for t in rec["turns"])
    assert all(lp == 0.0 for lp, m in zip(rec["behaviour_logprobs"], mask) if not m)
    # the masked spans are exactly the assistant bodies the template would supervise
    prompt = render(rec["messages"][:2], rec["tools"], add_generation_prompt=True)
    assert tok.decode(ids[:len(tok.encode(prompt))]) == prompt and not any(mask[:len(tok.encode(prompt))])


def test_scripted_environment_multi_turn_record_masks_cover_exactly_model_tokens(tok):
    eng = ScriptedEngine(tok)
    envs = {}
    loop = Rollout(eng, tok, lambda t: envs.setdefault(t["id"], _env(t)))
    recs = {r["id"]: r for r in loop.run([_task("task-a"), _task("task-b"), _task("task-c")])}
    assert set(recs) == {"task-a", "task-b", "task-c"}  # the third task refilled a finished row
    a = recs["task-a"]
    _check_record(a, tok)
    assert a["termination"] == "final_answer" and len(a["turns"]) == 3
    assert [c.arguments for c in envs["task-a"].calls] == [{"key": "alpha", "n": 2}, {"key": "beta"}]
    assert [m["role"] for m in a["messages"]] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                                  "assistant"]
    assert a["messages"][3]["content"] == "alpha=2" and a["messages"][-1]["content"] == "The answer is 42."
    # the model tokens are exactly the scripted turns (each closed by <|im_end|>)
    model_text = tok.decode([t for t, m in zip(a["token_ids"], a["loss_mask"]) if m])
    assert model_text == "".join(s + "<|im_end|>" for s in SCRIPTS["task-a"])
    # token ids equal the template's rendering of the final conversation, up to the history's dropped thinking
    full = render(a["messages"], TOOLS)
    assert tok.decode(a["token_ids"]).endswith(full[full.rindex("<|im_start|>user"):].rstrip("\n"))


def test_a_turn_cut_by_a_stop_string_is_closed_by_the_loop(tok):
    (a,) = list(Rollout(ScriptedEngine(tok, close_turns=False), tok, _env).run([_task("task-a")]))
    _check_record(a, tok)
    first = a["loss_mask"].index(1)
    end = first + a["loss_mask"][first:].index(0)
    assert a["token_ids"][end] == tok.token_id("<|im_end|>")
    assert tok.decode(a["token_ids"][first:end]) == SCRIPTS["task-a"][0]


def test_malformed_call_gives_an_error_observation_and_is_counted(tok):
    loop = Rollout(ScriptedEngine(tok), tok, _env)
    (b,) = list(loop.run([_task("task-b")]))
    _check_record(b, tok)
    assert b["malformed_tool_calls"] == {"bad_json": 1} and b["termination"] == "final_answer"
    assert "Error: parameter 'n'" in b["messages"][3]["content"]


def test_turn_limit_and_forced_final_answer_over_the_token_budget(tok):
    (d,) = list(Rollout(ScriptedEngine(tok), tok, _env, RolloutConfig(max_turns=3)).run([_task("task-d")]))
    assert d["termination"] == "max_turns" and len(d["turns"]) == 3
    cfg = RolloutConfig(max_tokens=len(tok.encode(render(_task("x")["messages"], TOOLS))) + 250)
    (d,) = list(Rollout(ScriptedEngine(tok), tok, _env, cfg).run([_task("task-d")]))
    assert d["termination"] == "token_budget"
    assert d["messages"][-2]["content"] == FORCED_FINAL_MESSAGE
    _check_record(d, tok)


def test_real_engine_runs_the_loop_with_the_real_template(tok):
    cfg = M.presets.tiny(vocab_size=248320, hidden_size=32, num_hidden_layers=2)
    params = M.unbox(M.init(cfg, jax.random.PRNGKey(0), include_mtp=False))
    eng = Engine(params, cfg, batch_size=2, max_len=1024, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                 max_new_tokens=4, chunk_sizes=(256, 16, 1), sampling=SamplingParams())
    recs = list(Rollout(eng, tok, _env).run([_task("task-a"), _task("task-b"), _task("task-c")]))
    assert len(recs) == 3
    for rec in recs:
        _check_record(rec, tok)
        assert rec["termination"] in ("max_new_tokens", "final_answer")
        assert all(lp <= 0 for lp in rec["behaviour_logprobs"])


def test_records_do_not_depend_on_the_cache_size_when_rows_must_be_reprefilled(tok):
    """Greedy: a cache too small for two rows forces turn-level scheduling and cache resets; the tokens match a
    roomy cache's exactly."""
    cfg = M.presets.tiny(vocab_size=248320, hidden_size=32, num_hidden_layers=2)
    params = M.unbox(M.init(cfg, jax.random.PRNGKey(0), include_mtp=False))
    prompt_len = len(tok.encode(render(_task("task-a")["messages"], TOOLS, add_generation_prompt=True)))
    out = {}
    for max_len in (4 * prompt_len, prompt_len + 40):
        eng = Engine(params, cfg, batch_size=2, max_len=max_len, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                     max_new_tokens=4, chunk_sizes=(256, 16, 1), sampling=SamplingParams.greedy())
        recs = Rollout(eng, tok, _env).run([_task("task-a"), _task("task-b"), _task("task-c")])
        out[max_len] = {r["id"]: (r["token_ids"], r["loss_mask"]) for r in recs}
    roomy, tight = out.values()
    assert roomy == tight and len(roomy) == 3


class ForcedEngine(Engine):
    """The real engine, but each turn's tokens are the script's, fed one by one through the cache; the T = 1
    log-probs it records are then the cache's own scoring of the script."""

    def reset(self):
        super().reset()
        self.resets = getattr(self, "resets", -1) + 1  # not counting the one in __init__

    def start_row(self, r):
        super().start_row(r)
        self.seen = getattr(self, "seen", {})
        self.seen[r] = []

    def extend(self, chunks):
        super().extend(chunks)
        for r, ids in chunks.items():
            self.seen[r] += ids

    def generate(self, rows, budget=None):
        out = {}
        for r in rows:
            text = self.tok.decode(self.seen[r])
            script = next(v for k, v in SCRIPTS.items() if k in text)
            ids = self.tok.encode(script[text.count("<|im_start|>assistant") - 1]) + [self.tok.stop_ids[0]]
            lp = []
            for t in ids:
                lp.append(float(jax.nn.log_softmax(self.last_logits[r])[t]))
                self.extend({r: [t]})
            out[r] = {"tokens": ids, "logprobs": lp, "logprobs_t1": lp, "finish_reason": "stop"}
        return out


def test_multi_turn_cache_scoring_equals_a_full_forward_with_and_without_cache_resets(tok):
    cfg = M.presets.tiny(vocab_size=248320, hidden_size=32, num_hidden_layers=2)
    params = M.unbox(M.init(cfg, jax.random.PRNGKey(0), include_mtp=False))
    results = {}
    for max_len in (2048, 500):  # 500 holds one trajectory (<= 413 tokens + a turn) but not both
        eng = ForcedEngine(params, cfg, batch_size=2, max_len=max_len, stop_ids=tok.stop_ids, pad_id=tok.pad_id,
                           max_new_tokens=64, chunk_sizes=(256, 16, 1))
        eng.tok = tok
        recs = Rollout(eng, tok, _env).run([_task("task-a"), _task("task-b")])
        results[max_len] = {r["id"]: r for r in recs}
        assert (eng.resets > 0) == (max_len < 2048)
    for rid, rec in results[2048].items():
        assert rec["termination"] == "final_answer"
        ids, mask = rec["token_ids"], rec["loss_mask"]
        hidden = M.forward(params, jax.numpy.asarray([ids]), cfg, return_logits=False).hidden[0]
        where = [i for i, m in enumerate(mask) if m]
        logits = M.logits_from_hidden(params, hidden[jax.numpy.asarray(where) - 1], cfg)
        want = jax.nn.log_softmax(logits, axis=-1)[jax.numpy.arange(len(where)), jax.numpy.asarray(
            [ids[i] for i in where])]
        got = [rec["logprobs_t1"][i] for i in where]
        assert max(abs(a - float(b)) for a, b in zip(got, want)) < 2e-4
        tight = results[500][rid]
        assert tight["token_ids"] == ids
        assert max(abs(a - b) for a, b in zip(tight["logprobs_t1"], rec["logprobs_t1"])) < 2e-4


def test_thinking_model_prompt_stops_at_the_assistant_header_and_the_model_opens_its_think_block(tok):
    cfg = RolloutConfig(enable_thinking="model")
    (a,) = list(Rollout(ScriptedEngine(tok), tok, _env, cfg).run([_task("task-a")]))
    prompt = render(a["messages"][:2], a["tools"], add_generation_prompt=True, enable_thinking="model")
    n = len(tok.encode(prompt))
    assert prompt.endswith("<|im_start|>assistant\n") and a["token_ids"][:n] == tok.encode(prompt)
    assert a["loss_mask"][n] == 1 and tok.decode(a["token_ids"][n:n + 1]) == "<think>"
    assert a["messages"][2]["reasoning_content"] == "I should look up alpha."
    assert a["messages"][-1] == {"role": "assistant", "content": "The answer is 42.", "reasoning_content": "Done."}
