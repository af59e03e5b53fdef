"""Parse the qwen3_coder XML tool calls that the Qwen3.5 chat template renders (a1jax/data/chat.py):

    <tool_call>
    <function=NAME>
    <parameter=ARG>
    VALUE
    </parameter>
    </function>
    </tool_call>

A value is converted by the parameter's JSON-schema type, as serving parsers do: strings stay raw text; integer,
number, boolean, object and array values are read as JSON (a failure is an error, never a silent string); untyped
or unknown parameters are read as JSON when they parse and kept raw otherwise. One newline each side of a value is
the template's, not the value's. Errors never raise: they come back as `ToolCallError`s for the model to read.
"""
from __future__ import annotations

import dataclasses
import json
import re

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_FUNCTION = re.compile(r"^\s*<function=([^>\n]+)>(.*)</function>\s*$", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.S)
_JSON_TYPES = ("integer", "number", "boolean", "object", "array", "null")


@dataclasses.dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


@dataclasses.dataclass(frozen=True)
class ToolCallError:
    """A call the loop cannot execute; `message` is shown to the model as the tool result."""
    kind: str  # "bad_xml" | "unknown_function" | "missing_parameter" | "bad_json"
    message: str


def _schemas(tools) -> dict[str, dict] | None:
    if tools is None:  # no tool list known (some shipped records): any name, untyped parameters
        return None
    out = {}
    for tool in tools or ():
        fn = tool.get("function", tool)
        out[fn["name"]] = fn.get("parameters") or {}
    return out


def _convert(raw: str, schema: dict | None):
    kind = (schema or {}).get("type")
    if isinstance(kind, list):  # ["string", "null"] and the like: the first non-null type decides
        kind = next((k for k in kind if k != "null"), None)
    if kind == "string":
        return raw
    if kind == "boolean" and raw.strip().lower() in ("true", "false"):  # the template renders Python's True/False
        return raw.strip().lower() == "true"
    if kind is None and raw in ("True", "False"):  # str(bool) from the template, for a parameter with no schema
        return raw == "True"
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        if kind in _JSON_TYPES:
            raise ValueError(f"is not valid JSON for type {kind!r} ({e.msg})") from None
        return raw


def _strip_template_newlines(value: str) -> str:
    if value.startswith("\n"):
        value = value[1:]
    if value.endswith("\n"):
        value = value[:-1]
    return value


def parse_call(body: str, schemas: dict[str, dict] | None) -> ToolCall | ToolCallError:
    m = _FUNCTION.match(body)
    if not m:
        return ToolCallError("bad_xml", "Error: malformed tool call: expected <function=NAME>...</function> "
                                        "inside <tool_call></tool_call>.")
    name, inner = m.group(1).strip(), m.group(2)
    if schemas is not None and name not in schemas:
        return ToolCallError("unknown_function", f"Error: unknown function {name!r}; available: "
                                                 f"{', '.join(sorted(schemas)) or 'none'}.")
    schema = {} if schemas is None else schemas[name]
    props = schema.get("properties") or {}
    if _PARAMETER.sub("", inner).strip():
        return ToolCallError("bad_xml", f"Error: malformed tool call to {name!r}: text outside "
                                        f"<parameter=NAME>...</parameter> blocks.")
    arguments = {}
    for pname, raw in _PARAMETER.findall(inner):
        pname = pname.strip()
        try:
            arguments[pname] = _convert(_strip_template_newlines(raw), props.get(pname))
        except ValueError as e:
            return ToolCallError("bad_json", f"Error: parameter {pname!r} of {name!r} {e}.")
    missing = [p for p in schema.get("required") or () if p not in arguments]
    if missing:
        return ToolCallError("missing_parameter", f"Error: {name!r} is missing required parameter(s): "
                                                  f"{', '.join(missing)}.")
    return ToolCall(name, arguments)


def parse_tool_calls(text: str, tools) -> tuple[str, list[ToolCall | ToolCallError]]:
    """Splits an assistant turn's content into (text before the first call, parsed calls in order).

    tools: the task's OpenAI-style tool list; None skips the name and type checks (records that ship no tools).
    A `<tool_call>` that is never closed is a bad-XML error, so a truncated call is reported rather than ignored."""
    schemas = _schemas(tools)
    first = text.find("<tool_call>")
    if first < 0:
        return text, []
    calls: list[ToolCall | ToolCallError] = [parse_call(b, schemas) for b in _BLOCK.findall(text)]
    tail = _BLOCK.sub("", text[first:])
    if "<tool_call>" in tail or "</tool_call>" in tail:
        calls.append(ToolCallError("bad_xml", "Error: malformed tool call: unbalanced <tool_call> tags."))
    return text[:first].rstrip("\n"), calls
