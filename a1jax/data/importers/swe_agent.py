"""SWE-agent (SWE-agent/SWE-agent) `.traj` files -> records.

A `.traj` file's `history` is the exact chat the agent model saw. Two action styles occur:

- native function calling (assistant messages carry `tool_calls`, observations are `tool` messages with
  `tool_call_ids`): messages are copied, each observation answering its single call id. The tool schemas are not
  stored in the file, so `tools` is empty unless `a1jax data import --tools FILE` supplies them.
- text actions (the ReAct "discussion + ```command```" / `<command>` styles): the model's `thought` becomes the
  assistant content and its `action` a call of one tool, `bash` (BASH_TOOL: the agent's shell, where SWE-agent's
  special commands such as `open` and `edit` also run), with arguments {"command": action}; the user message that
  follows (the observation) becomes that call's `tool` result. The action loses only the newlines the fence parser
  leaves around it. Other user messages (the task, a demonstration) stay user messages.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from a1jax.data.importers._json import convert_json_file
from a1jax.data.schema import UNSUPPORTED_RECORD, RecordError

EXTENSIONS = (".traj",)

BASH_TOOL = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run one command in the agent's shell: a bash command line, or one of the special interface "
                       "commands (open, goto, scroll_down, edit, find_file, search_file, submit, ...) documented in "
                       "the system prompt. Returns the command's output followed by the shell prompt.",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "The command exactly as typed at the prompt "
                                                                       "(multi-line for edit blocks)."}},
            "required": ["command"],
        },
    },
}


def convert_file(path: Path, domain: str) -> Iterator[tuple[str, dict | RecordError]]:
    return convert_json_file(path, domain, convert_traj)


def convert_traj(data: Any, path: Path, domain: str) -> dict | RecordError:
    history = data.get("history") if isinstance(data, dict) else None
    if not isinstance(history, list) or not history:
        return RecordError(UNSUPPORTED_RECORD, "not a SWE-agent trajectory (no non-empty 'history' list)")
    bad = next((i for i, m in enumerate(history) if not isinstance(m, dict)), None)
    if bad is not None:
        return RecordError(UNSUPPORTED_RECORD, f"history[{bad}]: expected a message object, got "
                                               f"{type(history[bad]).__name__}")
    native = any(m.get("tool_calls") for m in history)
    converted = _native(history) if native else _text_actions(history)
    if isinstance(converted, RecordError):
        return converted
    messages, demo_turns = converted
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    metadata = {"action_style": "native" if native else "text", "exit_status": info.get("exit_status"),
                "demonstration_turns": demo_turns}
    return {
        "id": f"swe_agent/{path.stem}",
        "source": f"swe_agent:{path.name}",
        "domain": domain,
        "messages": messages,
        "tools": [] if native else [BASH_TOOL],
        "metadata": metadata,
    }


def _native(history: list) -> tuple[list, list] | RecordError:
    messages, demo_turns = [], []
    for i, m in enumerate(history):
        role = m.get("role")
        if role == "tool":
            ids = m.get("tool_call_ids") or []
            if not isinstance(ids, list):
                return RecordError(UNSUPPORTED_RECORD, f"message {i}: tool_call_ids must be a list, got "
                                                       f"{type(ids).__name__}")
            if len(ids) != 1:
                return RecordError(UNSUPPORTED_RECORD, f"message {i}: a tool message answering {len(ids)} calls")
            messages.append({"role": "tool", "content": m.get("content"), "tool_call_id": ids[0]})
        elif role == "assistant" and m.get("tool_calls"):
            if not isinstance(m["tool_calls"], list) or not all(isinstance(c, dict) for c in m["tool_calls"]):
                return RecordError(UNSUPPORTED_RECORD, f"message {i}: tool_calls must be a list of objects")
            calls = [{"id": c.get("id"), "type": "function", "function": c.get("function")} for c in m["tool_calls"]]
            messages.append({"role": "assistant", "content": m.get("content"), "tool_calls": calls})
        else:
            if m.get("is_demo"):
                demo_turns.append(i)
            messages.append({"role": role, "content": m.get("content")})
    return messages, demo_turns


def _text_actions(history: list) -> tuple[list, list] | RecordError:
    messages, demo_turns = [], []
    pending_id = None  # the bash call whose output the next user message carries
    for i, m in enumerate(history):
        role = m.get("role")
        if role == "assistant":
            action = m.get("action")
            if not isinstance(m.get("thought"), str) or not isinstance(action, str):
                return RecordError(UNSUPPORTED_RECORD, f"message {i}: a text-action assistant turn without string "
                                                       f"'thought' and 'action'")
            message = {"role": "assistant", "content": m["thought"]}
            command = action.strip("\n")
            pending_id = None
            if command.strip():
                pending_id = f"call_{i}"
                message["tool_calls"] = [{"id": pending_id, "type": "function", "function": {
                    "name": "bash", "arguments": json.dumps({"command": command}, ensure_ascii=False)}}]
            messages.append(message)
        elif role == "user" and pending_id is not None:
            messages.append({"role": "tool", "name": "bash", "content": m.get("content"), "tool_call_id": pending_id})
            pending_id = None
        else:
            if m.get("is_demo"):
                demo_turns.append(i)
            messages.append({"role": role, "content": m.get("content")})
            pending_id = None
    return messages, demo_turns
