"""Malformed trajectory records give the documented `file:line: reason` errors and skip counts."""
from pathlib import Path

import pytest

from a1jax.data import schema
from a1jax.data.records import SkipReport, read_records

FIXTURE = Path(__file__).parent / "data" / "malformed.jsonl"

EXPECTED_COUNTS = {
    schema.UNKNOWN_ROLE: 1,
    schema.UNMATCHED_TOOL_RESULT: 2,
    schema.UNPARSEABLE_ARGUMENTS: 2,
    schema.EMPTY_CONVERSATION: 1,
    schema.NON_STRING_CONTENT: 2,
    schema.INVALID_JSON: 1,
    schema.NO_USER_QUERY: 1,
}


def test_default_mode_skips_bad_records_and_counts_them_by_reason():
    skips = SkipReport()
    kept = [(line, record["id"]) for line, record in read_records(FIXTURE, skips=skips)]
    assert kept == [(1, "fixture/1"), (10, "fixture/10")]
    assert dict(skips.counts) == EXPECTED_COUNTS
    assert skips.total == 10


def test_skip_report_names_file_line_message_and_field():
    skips = SkipReport()
    list(read_records(FIXTURE, skips=skips))
    assert skips.examples[schema.UNKNOWN_ROLE] == [
        f"{FIXTURE}:2: message 1: unknown role 'robot' (expected system, user, assistant or tool)"]
    assert skips.examples[schema.UNMATCHED_TOOL_RESULT][0] == (
        f"{FIXTURE}:3: message 2: tool_call_id 'call_9' answers no open call of the preceding assistant turn")
    assert skips.examples[schema.UNPARSEABLE_ARGUMENTS][0].startswith(
        f"{FIXTURE}:4: message 1: tool_calls[0]: arguments are not valid JSON")
    assert skips.examples[schema.UNPARSEABLE_ARGUMENTS][1] == (
        f"{FIXTURE}:8: message 1: tool_calls[0]: arguments must decode to a JSON object, got list: '[1, 2]'")
    assert skips.examples[schema.EMPTY_CONVERSATION] == [f"{FIXTURE}:5: 'messages' is empty"]
    assert skips.examples[schema.NON_STRING_CONTENT] == [
        f"{FIXTURE}:6: message 0: content must be a string, got int",
        f"{FIXTURE}:12: message 0: content must be a string, got list"]
    assert skips.examples[schema.INVALID_JSON][0].startswith(f"{FIXTURE}:7: not valid JSON")
    report = "\n".join(skips.lines())
    assert report.startswith("skipped: 10 records")
    assert "2  tool result with no matching call" in report


def test_strict_mode_stops_at_the_first_bad_record():
    with pytest.raises(ValueError) as e:
        list(read_records(FIXTURE, strict=True))
    assert str(e.value) == f"{FIXTURE}:2: message 1: unknown role 'robot' (expected system, user, assistant or tool)"


def _record(messages, **fields):
    return {"id": "r", "source": "s", "domain": "d", "messages": messages, "tools": [], "metadata": {}, **fields}


USER = {"role": "user", "content": "hi"}


@pytest.mark.parametrize("record, reason, detail", [
    (_record([USER, {"role": "assistant", "content": "x", "tool_calls": [
        {"id": "a", "function": {"name": "f", "arguments": "{}"}},
        {"id": "a", "function": {"name": "g", "arguments": "{}"}}]}]),
     schema.BAD_TOOL_CALL, "message 1: tool_calls[1]: duplicate call id 'a'"),
    (_record([USER, {"role": "assistant", "content": "x", "tool_calls": [{"id": "a", "function": {"name": "f"}}]}]),
     schema.UNPARSEABLE_ARGUMENTS, "message 1: tool_calls[0]: function.arguments is missing"),
    (_record([USER, {"role": "assistant", "content": "x", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}]},
              {"role": "tool", "tool_call_id": "a", "content": "1"}, {"role": "tool", "tool_call_id": "a", "content": "2"}]),
     schema.UNMATCHED_TOOL_RESULT, "message 3: tool_call_id 'a' answers no open call of the preceding assistant turn"),
    (_record([USER, {"role": "system", "content": "late"}]),
     schema.SYSTEM_NOT_FIRST, "message 1: a system message must be the first message"),
    (_record([USER, {"role": "assistant", "content": "x", "weight": 0}]),
     schema.UNKNOWN_FIELD, "message 1: unknown field 'weight' for role 'assistant' "
                           "(allowed: content, name, reasoning_content, role, tool_calls)"),
    (_record([{"role": "user", "content": "<tool_response>\nout\n</tool_response>"}]),
     schema.NO_USER_QUERY, "no user message with a real query (the Qwen3.5 template needs one)"),
    (_record([USER], tools=[{"type": "function"}]),
     schema.BAD_TOOLS, "tools[0] must be {'type': 'function', 'function': {'name': str, 'description'?: str, "
     "'parameters'?: object}}, got {'type': 'function'}"),
    (_record([USER], domain=""), schema.BAD_FIELD, "field 'domain' must be a non-empty string, got ''"),
    (_record([USER, {"role": "assistant", "content": "x", "reasoning_content": ["a"]}]),
     schema.NON_STRING_CONTENT, "message 1: reasoning_content must be a string or null, got list"),
])
def test_each_rule_has_its_reason_and_a_detail_naming_the_field(record, reason, detail):
    with pytest.raises(schema.RecordError) as e:
        schema.validate_record(record)
    assert (e.value.reason, e.value.detail) == (reason, detail)


def test_assistant_content_may_be_null_but_tool_content_may_not():
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}
    schema.validate_record(_record([USER, call, {"role": "tool", "tool_call_id": "c", "content": "ok"}]))
    with pytest.raises(schema.RecordError) as e:
        schema.validate_record(_record([USER, call, {"role": "tool", "tool_call_id": "c", "content": None}]))
    assert e.value.detail == "message 2: content must be a string, got NoneType"
