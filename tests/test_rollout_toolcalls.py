"""The qwen3_coder tool-call parser against the chat template: every call in the shipped trajectories round-trips,
and malformed calls come back as error observations instead of exceptions."""
import json
from pathlib import Path

import pytest

from a1jax.data.chat import render
from a1jax.data.schema import parse_arguments
from a1jax.rollout.toolcalls import ToolCall, ToolCallError, parse_tool_calls

DATA = Path(__file__).resolve().parent.parent / "data" / "quickstart"
TOOLS = [{"type": "function", "function": {"name": "search", "parameters": {
    "type": "object", "required": ["query"],
    "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}, "filters": {"type": "object"}}}}}]


def _assistant_text(msg, tools):
    """The assistant turn exactly as the template renders it, minus the turn markers."""
    head = [{"role": "user", "content": "q"}]
    before = render(head, tools, add_generation_prompt=False)
    full = render(head + [{**msg, "reasoning_content": None}], tools)
    body = full[len(before):]
    return body[len("<|im_start|>assistant\n"):-len("<|im_end|>\n")]


def _shipped_calls():
    for path in sorted(DATA.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            for msg in rec["messages"]:
                if msg.get("role") == "assistant" and msg.get("tool_calls"):
                    yield rec, msg


def test_every_shipped_tool_call_round_trips_through_the_template():
    n = 0
    for rec, msg in _shipped_calls():
        text = _assistant_text(msg, rec.get("tools"))
        names = {t.get("function", t)["name"] for t in rec.get("tools") or ()}
        # some records ship no tool list, or call a function missing from it: parse those without schemas
        known = all(c["function"]["name"] in names for c in msg["tool_calls"])
        content, calls = parse_tool_calls(text, rec.get("tools") if known else None)
        want = [(c["function"]["name"], parse_arguments(c["function"]["arguments"])) for c in msg["tool_calls"]]
        assert [(c.name, c.arguments) for c in calls] == want, rec["id"]
        n += len(calls)
    assert n > 50


@pytest.mark.parametrize("text,kind", [
    ("<tool_call>\n<function=search>\n<parameter=query>\nx\n</parameter>\n", "bad_xml"),
    ("<tool_call>\n<parameter=query>\nx\n</parameter>\n</tool_call>", "bad_xml"),
    ("<tool_call>\n<function=search>\nquery=x\n</function>\n</tool_call>", "bad_xml"),
    ("<tool_call>\n<function=browse>\n<parameter=url>\nx\n</parameter>\n</function>\n</tool_call>", "unknown_function"),
    ("<tool_call>\n<function=search>\n<parameter=limit>\n3\n</parameter>\n</function>\n</tool_call>",
     "missing_parameter"),
    ("<tool_call>\n<function=search>\n<parameter=query>\nx\n</parameter>\n<parameter=filters>\n{bad\n"
     "</parameter>\n</function>\n</tool_call>", "bad_json"),
])
def test_malformed_calls_become_error_observations(text, kind):
    _, calls = parse_tool_calls("thinking done\n\n" + text, TOOLS)
    assert len(calls) == 1 and isinstance(calls[0], ToolCallError) and calls[0].kind == kind
    assert calls[0].message.startswith("Error:")


def test_string_parameters_stay_raw_and_typed_ones_are_json():
    text = ("<tool_call>\n<function=search>\n<parameter=query>\n 42 \n</parameter>\n<parameter=limit>\n3\n"
            "</parameter>\n<parameter=filters>\n{\"a\": [1]}\n</parameter>\n</function>\n</tool_call>")
    content, calls = parse_tool_calls("Let me look.\n\n" + text, TOOLS)
    assert content == "Let me look."
    assert calls == [ToolCall("search", {"query": " 42 ", "limit": 3, "filters": {"a": [1]}})]
