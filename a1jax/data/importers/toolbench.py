"""ToolBench (OpenBMB/ToolBench) DFSDT answer trees -> records.

An answer file holds the DFS search tree and, in `answer_generation.train_messages`, the training conversations
ToolBench derived from it: progressively longer OpenAI *legacy* function-calling chats, the last one being the whole
trajectory. That last chat is converted:

- assistant `function_call {name, arguments}` -> one `tool_calls` entry with id `call_<k>` (k counts calls in the
  record); the content, often a "Thought: ..." paragraph, stays the content;
- role `function` (name, content) -> a `tool` message answering the pending call; a result whose name is not the
  pending call's name has no matching call and makes the record invalid;
- the function schemas in `answer_generation.function` (including ToolBench's `Finish`) become `tools`;
- user turns flagged `valid: false` are the DFS "this is not the first time you try this task" prompts. They are
  part of what the model saw, so they stay; their indices are listed in `metadata.dfs_retry_turns`.

Files without `train_messages` (searches that found no valid answer) have no conversation to convert and are
reported as "unsupported record".
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from a1jax.data.importers._json import convert_json_file
from a1jax.data.schema import UNMATCHED_TOOL_RESULT, UNSUPPORTED_RECORD, RecordError

EXTENSIONS = (".json",)


def convert_file(path: Path, domain: str) -> Iterator[tuple[str, dict | RecordError]]:
    return convert_json_file(path, domain, convert_answer)


def convert_answer(data: Any, path: Path, domain: str) -> dict | RecordError:
    generation = data.get("answer_generation") if isinstance(data, dict) else None
    if not isinstance(generation, dict):
        return RecordError(UNSUPPORTED_RECORD, "not a ToolBench answer file (no 'answer_generation' object)")
    conversations = generation.get("train_messages")
    if not conversations:
        return RecordError(UNSUPPORTED_RECORD, f"no train_messages: the search found no training conversation "
                                               f"(valid_data={generation.get('valid_data')!r:.80})")
    if not isinstance(conversations, list) or not isinstance(conversations[-1], list):
        return RecordError(UNSUPPORTED_RECORD, "answer_generation.train_messages must be a list of conversations "
                                               "(lists of messages)")
    functions = generation.get("function", [])
    if not isinstance(functions, list) or not all(isinstance(f, dict) for f in functions):
        return RecordError(UNSUPPORTED_RECORD, "answer_generation.function must be a list of function schemas "
                                               "(objects)")
    messages, retry_turns = [], []
    pending: dict | None = None  # the last call not answered yet
    n_calls = 0
    for i, message in enumerate(conversations[-1]):
        if not isinstance(message, dict):
            return RecordError(UNSUPPORTED_RECORD, f"message {i}: expected an object, got {type(message).__name__}")
        role = message.get("role")
        if role == "function":
            if pending is None or pending["function"]["name"] != message.get("name"):
                expected = pending["function"]["name"] if pending else "none"
                return RecordError(UNMATCHED_TOOL_RESULT, f"message {i}: result of function "
                                                          f"{message.get('name')!r:.80} does not answer the pending "
                                                          f"call ({expected})")
            messages.append({"role": "tool", "name": message["name"], "content": message.get("content"),
                             "tool_call_id": pending["id"]})
            pending = None
            continue
        converted = {"role": role, "content": message.get("content")}
        if role == "user" and message.get("valid") is False:
            retry_turns.append(i)
        if role == "assistant" and message.get("function_call"):
            call = message["function_call"]
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                return RecordError(UNSUPPORTED_RECORD, f"message {i}: function_call must be an object with a string "
                                                       f"'name'")
            pending = {"id": f"call_{n_calls}", "type": "function",
                       "function": {"name": call["name"], "arguments": call.get("arguments")}}
            n_calls += 1
            converted["tool_calls"] = [pending]
        else:
            pending = None
        messages.append(converted)
    group = path.parent.name.removesuffix("_answer")
    return {
        "id": f"toolbench/{group}/{path.stem}",
        "source": f"toolbench:{group}/{path.name}",
        "domain": domain,
        "messages": messages,
        "tools": [{"type": "function", "function": f} for f in functions],
        "metadata": {"query": generation.get("query"), "finish_type": generation.get("finish_type"),
                     "win": data.get("win"), "dfs_retry_turns": retry_turns},
    }
