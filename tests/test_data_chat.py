"""`chat.render` equals the official Qwen3.5 jinja template; the loss mask covers exactly the assistant's output."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from a1jax.data import tokenizers
from a1jax.data.chat import ROLE_IDS, render, render_spans, tokenize_trajectory
from a1jax.data.importers import import_records

jinja2 = pytest.importorskip("jinja2")
from a1jax.data.chat_reference import render_reference  # noqa: E402  (needs jinja2)

AGENTIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "agentic"
needs_shared = pytest.mark.skipif(not AGENTIC.exists(), reason=f"shared data not found at {AGENTIC}")
IM_START, TOOL_RESPONSE, END_TOOL_RESPONSE = 248045, 248066, 248067


@pytest.fixture(scope="module")
def trajectories():
    sources = [("tau_bench", AGENTIC / "tau_bench" / "gpt-4o-airline.json"),
               ("toolbench", AGENTIC / "toolbench" / "answer"), ("swe_agent", AGENTIC / "swe_agent")]
    return [r for fmt, path in sources for r in import_records(fmt, [path], domain=fmt)]


@pytest.fixture(scope="module")
def qwen3_5():
    return tokenizers.load("qwen3_5")


@needs_shared
def test_render_equals_the_jinja_template_on_every_shipped_trajectory(trajectories):
    assert len(trajectories) == 235
    for record in trajectories:
        assert render(record["messages"], record["tools"]) == render_reference(record["messages"], record["tools"])
    for record in trajectories[::20]:
        for thinking in (True, False):
            kwargs = dict(add_generation_prompt=True, enable_thinking=thinking)
            assert render(record["messages"], record["tools"], **kwargs) == \
                render_reference(record["messages"], record["tools"], **kwargs)


def _call(name, arguments, call_id="c0"):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Wetter für eine Stadt — 東京",
                                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
EDGE_CASES = {
    "non-string arguments": ([
        {"role": "user", "content": "book it"},
        {"role": "assistant", "content": "Booking.", "tool_calls": [_call("book", {
            "n": 3, "ratio": 0.5, "flag": True, "off": False, "none": None, "big": 1e20, "items": [1, "a", None],
            "obj": {"k": "v", "z": [1, {"y": "東京"}]}, "empty_list": [], "s": "two\nlines", "quote": "<b>&'\""})]},
        {"role": "tool", "tool_call_id": "c0", "content": "ok"}], None),
    "arguments as a JSON string": ([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, "tool_calls": [_call("f", '{"b": 1, "a": [true, null], "c": "x"}')]}],
        None),
    "several calls in one turn, merged results": ([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            _call("get_weather", {"city": "Paris"}, "a"), _call("get_weather", {"city": "Tokyo"}, "b"),
            _call("get_weather", {}, "c")]},
        {"role": "tool", "tool_call_id": "a", "content": "18C"},
        {"role": "tool", "tool_call_id": "b", "content": " 25C \n"},
        {"role": "tool", "tool_call_id": "c", "content": ""},
        {"role": "assistant", "content": "Paris 18C, Tokyo 25C."}], [WEATHER_TOOL]),
    "several user turns drop earlier reasoning": ([
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one", "reasoning_content": "think 1"},
        {"role": "assistant", "content": "<think>\nthink 2\n</think>\n\ntwo"},
        {"role": "user", "content": "second"},
        {"role": "user", "content": "<tool_response>\nnot a query\n</tool_response>"},
        {"role": "assistant", "content": "three", "reasoning_content": "  think 3  \n"},
        {"role": "assistant", "content": "<think>inline</think>four", "reasoning_content": "given wins"}], None),
    "empty contents": ([
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "  padded  \n"},
        {"role": "assistant", "content": "   ", "tool_calls": [_call("f", {"x": ""})]},
        {"role": "tool", "tool_call_id": "c0", "content": "   "}], [WEATHER_TOOL]),
    "empty system without tools": ([{"role": "system", "content": "  "}, {"role": "user", "content": "hi"}], None),
    "tools without a system message": ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                       [WEATHER_TOOL, {"type": "function", "function": {"name": "noop"}}]),
    "reasoning content around a call": ([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "Calling now.", "reasoning_content": "Need the weather.",
         "tool_calls": [_call("get_weather", {"city": "Oslo"})]},
        {"role": "tool", "tool_call_id": "c0", "content": "-3C"}], [WEATHER_TOOL]),
    "flat tool call without a function wrapper": ([
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "x", "tool_calls": [{"name": "f", "arguments": {"a": 1}}]}], None),
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
@pytest.mark.parametrize("prompt", [dict(), dict(add_generation_prompt=True),
                                    dict(add_generation_prompt=True, enable_thinking=False)])
def test_render_equals_the_jinja_template_on_edge_cases(name, prompt):
    messages, tools = EDGE_CASES[name]
    assert render(messages, tools, **prompt) == render_reference(messages, tools, **prompt)


def test_render_formats_argument_values_like_the_template():
    messages, _ = EDGE_CASES["non-string arguments"]
    text = render(messages)
    for expected in ("<parameter=n>\n3\n</parameter>", "<parameter=flag>\nTrue\n</parameter>",
                     "<parameter=none>\nNone\n</parameter>", "<parameter=big>\n1e+20\n</parameter>",
                     '<parameter=obj>\n{"k": "v", "z": [1, {"y": "東京"}]}\n</parameter>',
                     "<parameter=s>\ntwo\nlines\n</parameter>", "<parameter=quote>\n<b>&'\"\n</parameter>"):
        assert expected in text


def test_reasoning_is_kept_only_after_the_last_real_query():
    messages, _ = EDGE_CASES["several user turns drop earlier reasoning"]
    text = render(messages)
    before, after = text.split("second")
    assert "think 1" not in text and "think 2" not in text and "<think>" not in before
    assert "<|im_start|>assistant\none<|im_end|>\n<|im_start|>assistant\ntwo<|im_end|>" in before
    assert "<|im_start|>assistant\n<think>\nthink 3\n</think>\n\nthree<|im_end|>" in text
    assert "<think>\ngiven wins\n</think>\n\n<think>inline</think>four" in text


@pytest.mark.parametrize("messages, error", [
    ([], "No messages provided."),
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "No user query found in messages."),
    ([{"role": "user", "content": "u"}, {"role": "system", "content": "s"}], "System message must be at the beginning."),
    ([{"role": "user", "content": "u"}, {"role": "robot", "content": "r"}], "Unexpected message role."),
])
def test_render_raises_where_the_template_raises(messages, error):
    with pytest.raises(ValueError, match=error):
        render(messages)
    if messages:
        with pytest.raises(ValueError, match=error):
            render_reference(messages)


def _runs(mask):
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    return list(zip(edges[::2], edges[1::2]))


@needs_shared
def test_supervised_tokens_are_exactly_the_assistant_output_on_every_shipped_trajectory(trajectories, qwen3_5):
    for record in trajectories:
        out = tokenize_trajectory(record, qwen3_5)
        tokens, mask, roles = out["tokens"], out["loss_mask"], out["roles"]
        rendered = render_spans(record["messages"], record["tools"])
        assert tokens.tolist() == qwen3_5.encode(rendered.text)  # one render, one tokenization
        supervised = [rendered.text[s.start:s.end] for s in rendered.spans if s.supervised]
        runs = _runs(mask)
        assert len(runs) == len(supervised) == sum(m["role"] == "assistant" for m in record["messages"])
        for (a, b), text in zip(runs, supervised):
            assert qwen3_5.decode(tokens[a:b]) == text  # each supervised run decodes to one assistant turn's output
            assert text.endswith("<|im_end|>")
        assert (roles[mask == 1] == ROLE_IDS["assistant"]).all()
        assert not mask[roles == ROLE_IDS["tool"]].any()  # no tool output is supervised
        assert not np.isin(tokens[mask == 1], [IM_START, TOOL_RESPONSE, END_TOOL_RESPONSE]).any()
        assert out["domain"] == record["domain"] and out["id"] == record["id"]


@needs_shared
def test_turn_ids_follow_the_chatml_turns(trajectories, qwen3_5):
    for record in trajectories[::10]:
        out = tokenize_trajectory(record, qwen3_5)
        starts = np.flatnonzero(out["tokens"] == IM_START)
        assert starts[0] == 0 and len(starts) == out["num_turns"]
        assert (np.diff(out["turn_ids"]) >= 0).all()
        assert out["turn_ids"][starts].tolist() == list(range(out["num_turns"]))


@needs_shared
def test_tokenizing_turn_by_turn_gives_the_same_ids_for_qwen3_5(trajectories, qwen3_5):
    # Turn boundaries sit on special tokens and newlines, so no BPE merge crosses them
    # (docs/spec/recipe.md §6.5, test 12).
    for record in trajectories[::7]:
        rendered = render_spans(record["messages"], record["tools"])
        pieces = [qwen3_5.encode(rendered.text[s.start:s.end]) for s in rendered.spans]
        assert sum(pieces, []) == qwen3_5.encode(rendered.text)


@needs_shared
def test_after_last_query_supervises_only_turns_rendered_with_their_reasoning(trajectories, qwen3_5):
    # tau-bench conversations (several user turns) that end with the agent, not the user's "###STOP###"
    record = next(r for r in trajectories if sum(m["role"] == "user" for m in r["messages"]) > 3
                  and r["messages"][-1]["role"] != "user")
    last_query = max(i for i, m in enumerate(record["messages"]) if m["role"] == "user")
    out = tokenize_trajectory(record, qwen3_5, supervise="after_last_query")
    later = sum(m["role"] == "assistant" for m in record["messages"][last_query + 1:])
    runs = _runs(out["loss_mask"])
    assert len(runs) == later >= 1
    assert all(qwen3_5.decode(out["tokens"][a:b]).startswith("<think>\n") for a, b in runs)
    assert tokenize_trajectory(record, qwen3_5)["loss_mask"].sum() > out["loss_mask"].sum()


def test_mask_with_a_foreign_tokenizer_still_covers_every_assistant_character():
    mistral = tokenizers.load("mistral_v3")
    messages, tools = EDGE_CASES["several calls in one turn, merged results"]
    record = {"id": "x", "source": "s", "domain": "d", "messages": messages, "tools": tools, "metadata": {}}
    out = tokenize_trajectory(record, mistral)
    supervised_text = mistral.decode(out["tokens"][out["loss_mask"] == 1])
    assert "Paris 18C, Tokyo 25C." in supervised_text and "<function=get_weather>" in supervised_text
    assert "25C" not in mistral.decode(out["tokens"][out["roles"] == ROLE_IDS["assistant"]]).split("Paris 18C")[0]


def test_unknown_supervise_mode_is_rejected(qwen3_5):
    record = {"id": "x", "source": "s", "domain": "d", "messages": [{"role": "user", "content": "q"}]}
    with pytest.raises(ValueError, match="supervise='tools': expected one of all, after_last_query"):
        tokenize_trajectory(record, qwen3_5, supervise="tools")


def test_reference_renderer_reads_the_official_template_shipped_in_the_package():
    from a1jax.data.chat_reference import template_path
    path = template_path()
    assert path.resolve().is_relative_to(Path(tokenizers.__file__).resolve().parents[2])
    # sha256 of the official Qwen3.5-35B-A3B chat_template.jinja (shared/data/tokenizers/qwen3_5/PROVENANCE.md)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == \
        "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715"


def test_thinking_model_prompt_is_a_token_prefix_of_the_training_tokens(qwen3_5):
    """A model trained on whole-trajectory tokenizations continues `enable_thinking="model"` prompts in distribution:
    the prompt's tokens are exactly the training tokens before the first supervised one. The template's default
    prompt (`<think>\\n`) is not, when the reasoning is empty: training has the one token `\\n\\n` there."""
    for reasoning in ("", "Look it up."):
        record = {"id": "r", "domain": "d", "messages": [{"role": "user", "content": "Write a haiku."},
                               {"role": "assistant", "content": "Snow.", "reasoning_content": reasoning}]}
        t = tokenize_trajectory(record, qwen3_5)
        first = int(np.argmax(np.asarray(t["loss_mask"]) == 1))
        prompt = qwen3_5.encode(render(record["messages"][:1], add_generation_prompt=True, enable_thinking="model"))
        assert list(t["tokens"][:first]) == prompt
        default = qwen3_5.encode(render(record["messages"][:1], add_generation_prompt=True))
        if not reasoning:
            assert list(t["tokens"][:len(default)]) != default
    with pytest.raises(ValueError, match="enable_thinking='yes'"):
        render([{"role": "user", "content": "x"}], add_generation_prompt=True, enable_thinking="yes")
