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

Values: JSON text is read with `load_json`, which refuses what Python's json module would let through or crash on
(NaN / Infinity, integers longer than 4,300 digits, nesting deeper than MAX_DEPTH, invalid UTF-8), and every string
of a record must be valid Unicode (no lone UTF-16 surrogates such as "\\ud800", which could not be written back as
UTF-8). Records built in memory go through the same value checks (`check_values`).

Validation never repairs a record: it accepts it or raises `RecordError` with a reason code (the key that skip counts
are grouped by) and a human-readable detail naming the message and field.
"""
from __future__ import annotations

import json
import math
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
BAD_VALUE = "bad value"  # nesting deeper than MAX_DEPTH, a lone surrogate, NaN / Infinity, a non-string key
DUPLICATE_ID = "duplicate id"  # readers: an id seen earlier in the same file (or import run)

MAX_DEPTH = 100  # nesting levels of objects and lists a record may have (tool parameter schemas nest a few)


class RecordError(ValueError):
    """A record that breaks the schema. `reason` is one of the codes above; str(e) is the detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (non-finite numbers are not allowed)")


def load_json(text: str | bytes) -> Any:
    """JSON text (str, or bytes that must be UTF-8) -> value, or `RecordError(INVALID_JSON / BAD_VALUE)`; never
    anything else. The value passed `check_values`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RecordError(INVALID_JSON, f"not valid UTF-8 (byte {e.start}: {e.object[e.start:e.start + 1]!r})"
                              ) from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise RecordError(INVALID_JSON, f"not valid JSON ({e.msg} at char {e.pos}"
                                        + (f", line {e.lineno})" if e.lineno > 1 else ")")) from None
    except RecursionError:
        raise RecordError(BAD_VALUE, f"not readable JSON: nested deeper than Python's recursion limit "
                                     f"(at most {MAX_DEPTH} levels are allowed)") from None
    except ValueError as e:  # NaN / Infinity (above), integers beyond Python's int-string limit
        raise RecordError(INVALID_JSON, f"not valid JSON ({str(e).split(';')[0]})") from None
    check_values(value)
    return value


def check_values(value: Any, where: str = "") -> None:
    """Raise `RecordError(BAD_VALUE)` for nesting deeper than MAX_DEPTH, a string with a lone surrogate, a
    non-finite float, a non-string object key or a non-JSON type; iterative, so any depth is safe to check."""
    stack = [(value, where, 0)]
    while stack:
        node, at, depth = stack.pop()
        if isinstance(node, str):
            if not node.isascii():
                try:
                    node.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise RecordError(BAD_VALUE, f"{at or 'value'}: string has a lone UTF-16 surrogate "
                                                 f"{node[e.start]!r} at char {e.start}") from None
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise RecordError(BAD_VALUE, f"{at or 'value'}: {node} is not a finite number")
        elif isinstance(node, (dict, list)):
            if depth >= MAX_DEPTH:
                raise RecordError(BAD_VALUE, f"{at or 'value'}: nested deeper than {MAX_DEPTH} levels")
            if isinstance(node, dict):
                for k, v in node.items():
                    if not isinstance(k, str):
                        raise RecordError(BAD_VALUE, f"{at or 'value'}: object key {k!r} is not a string")
                    stack.append((k, f"{at}.{k}" if at else k, depth + 1))
                    stack.append((v, f"{at}.{k}" if at else k, depth + 1))
            else:
                stack += [(v, f"{at}[{i}]", depth + 1) for i, v in enumerate(node)]
        elif not (node is None or isinstance(node, (bool, int))):
            raise RecordError(BAD_VALUE, f"{at or 'value'}: {type(node).__name__} is not a JSON type")


def parse_arguments(arguments: Any) -> dict:
    """Tool-call arguments as a dict: objects pass through, strings must hold a JSON object (OpenAI wire format)."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        raise RecordError(UNPARSEABLE_ARGUMENTS, f"arguments must be a JSON object or a string holding one, "
                                                 f"got {type(arguments).__name__}")
    try:
        parsed = load_json(arguments)
    except RecordError as e:
        raise RecordError(UNPARSEABLE_ARGUMENTS, f"arguments are {e.detail}: {arguments[:80]!r}") from None
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
    check_values(record)
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
    names = set()
    for i, tool in enumerate(tools):
        shape = f"tools[{i}] must be {{'type': 'function', 'function': {{'name': str, 'description'?: str, " \
                f"'parameters'?: object}}}}"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or set(tool) != {"type", "function"}:
            raise RecordError(BAD_TOOLS, f"{shape}, got {_short(tool)}")
        if tool["type"] != "function":
            raise RecordError(BAD_TOOLS, f"tools[{i}].type={tool['type']!r}: expected 'function'")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise RecordError(BAD_TOOLS, f"tools[{i}].function.name={name!r}: expected a non-empty string")
        if name in names:
            raise RecordError(BAD_TOOLS, f"tools[{i}].function.name={name!r}: a second tool with this name")
        names.add(name)
        unknown = sorted(set(function) - {"name", "description", "parameters"})
        if unknown:
            raise RecordError(BAD_TOOLS, f"tools[{i}].function: unknown field(s) {unknown} (allowed: name, "
                                         f"description, parameters)")
        if not isinstance(function.get("description", ""), str):
            raise RecordError(BAD_TOOLS, f"tools[{i}].function.description: expected a string, got "
                                         f"{type(function['description']).__name__}")
        if not isinstance(function.get("parameters", {}), dict):
            raise RecordError(BAD_TOOLS, f"tools[{i}].function.parameters: expected a JSON-schema object, got "
                                         f"{type(function['parameters']).__name__}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
        if "name" in message and (not isinstance(message["name"], str) or not message["name"]):
            raise RecordError(BAD_FIELD, f"{where}: name={_short(message['name'])}: expected a non-empty string")
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
        unknown = sorted(set(call) - {"id", "type", "function"})
        if unknown:
            raise RecordError(BAD_TOOL_CALL, f"{at}: unknown field(s) {unknown} (allowed: id, type, function)")
        if call.get("type", "function") != "function":
            raise RecordError(BAD_TOOL_CALL, f"{at}: type={_short(call['type'])}: expected 'function'")
        if call["id"] in ids:
            raise RecordError(BAD_TOOL_CALL, f"{at}: duplicate call id {call['id']!r}")
        ids.add(call["id"])
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise RecordError(BAD_TOOL_CALL, f"{at}: function.name must be a non-empty string")
        unknown = sorted(set(function) - {"name", "arguments"})
        if unknown:
            raise RecordError(BAD_TOOL_CALL, f"{at}: function has unknown field(s) {unknown} (allowed: name, "
                                             f"arguments)")
        if "arguments" not in function:
            raise RecordError(UNPARSEABLE_ARGUMENTS, f"{at}: function.arguments is missing")
        try:
            parse_arguments(function["arguments"])
        except RecordError as e:
            raise RecordError(e.reason, f"{at}: {e.detail}") from None
    return ids
