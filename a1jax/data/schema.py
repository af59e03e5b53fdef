"""The trajectory record every a1jax data path reads, and its validation.

One JSON object per line (JSONL):

  id        str, unique within its source, e.g. "tau_bench/gpt-4o-airline/task0/trial0"
  source    str, where it came from, e.g. "tau_bench:gpt-4o-airline.json"
  domain    str, the training domain (routes per-domain metrics and, later, teachers), e.g. "customer_service"
  messages  list of OpenAI-style messages (below), at least one
  tools     list of OpenAI tool schemas ({"type": "function", "function": {"name", "description", "parameters"}});
            may be empty when the source does not ship them
  metadata  object, free-form provenance (reward, task id, ...); never rendered

Messages (indices in errors count from 0):
  {"role": "system",    "content": str}                      only as the first message
  {"role": "user",      "content": str}
  {"role": "assistant", "content": str | null, "reasoning_content"?: str | null,
                        "tool_calls"?: [{"id": str, "type": "function",
                                         "function": {"name": str, "arguments": JSON-object string | object}}]}
  {"role": "tool",      "content": str, "tool_call_id": str, "name"?: str}
  Any message may also carry "name" (OpenAI's participant name; not rendered by the Qwen3.5 template).

A tool message answers a call of the nearest assistant message before it (only tool messages in between), and
each call id is answered at most once. The Qwen3.5 template needs at least one real user query (a user message that
is not wholly a `<tool_response>`), so a record without one is invalid too.

Validation never repairs a record: it accepts it or raises `RecordError` with a reason code (the key that skip counts
are grouped by) and a human-readable detail naming the message and field.
"""
from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
RECORD_FIELDS = ("id", "source", "domain", "messages", "tools", "metadata")
_MESSAGE_FIELDS = {
    "system": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "reasoning_content", "tool_calls"},
    "tool": {"role", "content", "name", "tool_call_id"},
}

# Reason codes: skip counts are keyed by these.
INVALID_JSON = "invalid json"
BAD_FIELD = "bad field"
EMPTY_CONVERSATION = "empty conversation"
UNKNOWN_ROLE = "unknown role"
UNKNOWN_FIELD = "unknown field"
NON_STRING_CONTENT = "non-string content"
SYSTEM_NOT_FIRST = "system message not first"
BAD_TOOL_CALL = "bad tool call"
UNPARSEABLE_ARGUMENTS = "unparseable arguments"
UNMATCHED_TOOL_RESULT = "tool result with no matching call"
NO_USER_QUERY = "no user query"
BAD_TOOLS = "bad tools"
UNSUPPORTED_RECORD = "unsupported record"  # importers: a source record that has no faithful conversion


class RecordError(ValueError):
    """A record that breaks the schema. `reason` is one of the codes above; str(e) is the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_arguments(arguments: Any) -> dict:
    """Tool-call arguments as a dict: objects pass through, strings must hold a JSON object (OpenAI wire format)."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        raise RecordError(UNPARSEABLE_ARGUMENTS, f"arguments must be a JSON object or a string holding one, "
                                                 f"got {type(arguments).__name__}")
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as e:
        raise RecordError(UNPARSEABLE_ARGUMENTS, f"arguments are not valid JSON ({e.msg} at char {e.pos}): "
                                                 f"{arguments[:80]!r}") from None
    if not isinstance(parsed, dict):
        raise RecordError(UNPARSEABLE_ARGUMENTS, f"arguments must decode to a JSON object, got "
                                                 f"{type(parsed).__name__}: {arguments[:80]!r}")
    return parsed


def tool_call_function(call: Any) -> dict:
    """The {"name", "arguments"} part of a tool call."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise RecordError(BAD_TOOL_CALL, "a tool call must be an object with a 'function' object")
    return call["function"]


def is_tool_response_wrapper(content: str) -> bool:
    """The Qwen3.5 template's test for a user message that only relays tool output (not a real query)."""
    content = content.strip()
    return content.startswith("<tool_response>") and content.endswith("</tool_response>")


def validate_record(record: Any) -> None:
    """Raise `RecordError` for the first schema violation in `record`; return None if it is valid."""
    if not isinstance(record, dict):
        raise RecordError(INVALID_JSON, f"a record must be a JSON object, got {type(record).__name__}")
    for field in ("id", "source", "domain"):
        if not isinstance(record.get(field), str) or not record[field]:
            raise RecordError(BAD_FIELD, f"field {field!r} must be a non-empty string, got {record.get(field)!r}")
    for field in record:
        if field not in RECORD_FIELDS:
            raise RecordError(UNKNOWN_FIELD, f"unknown field {field!r} (expected {', '.join(RECORD_FIELDS)})")
    if not isinstance(record.get("metadata", {}), dict):
        raise RecordError(BAD_FIELD, "field 'metadata' must be an object")
    _validate_tools(record.get("tools", []))
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise RecordError(BAD_FIELD, f"field 'messages' must be a list, got {type(messages).__name__}")
    if not messages:
        raise RecordError(EMPTY_CONVERSATION, "'messages' is empty")
    _validate_messages(messages)


def _validate_tools(tools: Any) -> None:
    if not isinstance(tools, list):
        raise RecordError(BAD_TOOLS, f"field 'tools' must be a list, got {type(tools).__name__}")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RecordError(BAD_TOOLS, f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}")


def _validate_messages(messages: list) -> None:
    open_calls: set[str] = set()  # call ids of the last assistant turn not answered yet
    has_query = False
    for i, message in enumerate(messages):
        where = f"message {i}"
        if not isinstance(message, dict):
            raise RecordError(BAD_FIELD, f"{where}: a message must be an object, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise RecordError(UNKNOWN_ROLE, f"{where}: unknown role {role!r} (expected system, user, assistant or tool)")
        for field in message:
            if field not in _MESSAGE_FIELDS[role]:
                raise RecordError(UNKNOWN_FIELD, f"{where}: unknown field {field!r} for role {role!r} "
                                                 f"(allowed: {', '.join(sorted(_MESSAGE_FIELDS[role]))})")
        content = message.get("content")
        if not (isinstance(content, str) or (role == "assistant" and content is None)):
            kind = "missing" if "content" not in message else type(content).__name__
            allowed = "a string or null" if role == "assistant" else "a string"
            raise RecordError(NON_STRING_CONTENT, f"{where}: content must be {allowed}, got {kind}")
        if role == "system" and i != 0:
            raise RecordError(SYSTEM_NOT_FIRST, f"{where}: a system message must be the first message")
        if role == "user" and not is_tool_response_wrapper(content):
            has_query = True
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise RecordError(UNMATCHED_TOOL_RESULT, f"{where}: tool message has no string 'tool_call_id'")
            if call_id not in open_calls:
                raise RecordError(UNMATCHED_TOOL_RESULT, f"{where}: tool_call_id {call_id!r} answers no open call of "
                                                         f"the preceding assistant turn")
            open_calls.discard(call_id)
        else:
            open_calls = set()
        if role == "assistant":
            reasoning = message.get("reasoning_content")
            if reasoning is not None and not isinstance(reasoning, str):
                raise RecordError(NON_STRING_CONTENT, f"{where}: reasoning_content must be a string or null, "
                                                      f"got {type(reasoning).__name__}")
            open_calls = _validate_tool_calls(message.get("tool_calls"), where)
    if not has_query:
        raise RecordError(NO_USER_QUERY, "no user message with a real query (the Qwen3.5 template needs one)")


def _validate_tool_calls(calls: Any, where: str) -> set[str]:
    if calls is None:
        return set()
    if not isinstance(calls, list):
        raise RecordError(BAD_TOOL_CALL, f"{where}: tool_calls must be a list, got {type(calls).__name__}")
    ids: set[str] = set()
    for j, call in enumerate(calls):
        at = f"{where}: tool_calls[{j}]"
        try:
            function = tool_call_function(call)
        except RecordError as e:
            raise RecordError(e.reason, f"{at}: {e.detail}") from None
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise RecordError(BAD_TOOL_CALL, f"{at}: missing string 'id'")
        if call["id"] in ids:
            raise RecordError(BAD_TOOL_CALL, f"{at}: duplicate call id {call['id']!r}")
        ids.add(call["id"])
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise RecordError(BAD_TOOL_CALL, f"{at}: function.name must be a non-empty string")
        if "arguments" not in function:
            raise RecordError(UNPARSEABLE_ARGUMENTS, f"{at}: function.arguments is missing")
        try:
            parse_arguments(function["arguments"])
        except RecordError as e:
            raise RecordError(e.reason, f"{at}: {e.detail}") from None
    return ids
