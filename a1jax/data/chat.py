"""The Qwen3.5 chat template in Python, and one trajectory -> tokens + loss mask.

`render` reproduces the official Qwen3.5 template (`a1jax/assets/tokenizers/qwen3_5/chat_template.jinja`, as HF
`apply_chat_template` renders it) byte for byte; `chat_reference.render_reference` is the jinja2 reference the tests
compare against. Rules it encodes (docs/spec/model.md §5):
- ChatML turns `<|im_start|>{role}\\n{content}<|im_end|>\\n`, contents stripped of surrounding whitespace;
- with tools, a system turn listing them as JSON lines inside `<tools>`, the qwen3_coder instructions, then the
  user's system text;
- tool calls as qwen3_coder XML (`<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nVALUE\\n</parameter>\\n...`), string
  values raw, other values as JSON (mappings, lists) or Python `str` (numbers, booleans: `True`);
- consecutive tool messages merged into one user turn of `<tool_response>` blocks;
- assistant turns after the last real user query (one that is not wholly a `<tool_response>`) carry
  `<think>\\n{reasoning}\\n</think>\\n\\n`; earlier ones drop their reasoning.

`tokenize_trajectory` renders once, tokenizes the whole text once (tokenizing turns separately would change merges at
the boundaries, docs/spec/recipe.md §5) and derives the mask from the character spans the renderer records.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import numpy as np

from a1jax.data.schema import is_tool_response_wrapper, parse_arguments
from a1jax.data.tokenizers.base import Tokenizer

ROLE_IDS = {"system": 0, "user": 1, "assistant": 2, "tool": 3}
SUPERVISE_MODES = ("all", "after_last_query")
# enable_thinking for a generation prompt: True (the template's `<|im_start|>assistant\n<think>\n`), False (an empty
# think block, `<think>\n\n</think>\n\n`), or "model": the prompt stops at `<|im_start|>assistant\n` and the model
# writes its own `<think>` block. "model" is what a1jax-trained models see in training: the whole trajectory is
# tokenized at once, so an empty think block is the tokens `<think>`, `\n\n`, `</think>`, which a prompt ending in
# `<think>`, `\n` can never continue (the rendered text splits the `\n\n` token).
THINKING_MODES = (True, False, "model")


def check_thinking(value, where: str = "enable_thinking") -> None:
    """Raises ValueError naming `where` unless `value` is one of THINKING_MODES."""
    if not (isinstance(value, bool) or value == "model"):
        raise ValueError(f"{where}={value!r}: expected one of {THINKING_MODES}")

_TOOLS_HEADER = "# Tools\n\nYou have access to the following functions:\n\n<tools>"
_TOOLS_INSTRUCTIONS = (
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n<tool_call>\n"
    "<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple lines\n"
    "</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow the specified "
    "format: an inner <function=...></function> block must be nested within <tool_call></tool_call> XML tags\n"
    "- Required parameters MUST be specified\n- You may provide optional reasoning for your function call in natural "
    "language BEFORE the function call, but NOT after\n- If there is no function call available, answer the question "
    "like normal with your current knowledge and do not tell the user about function calls\n</IMPORTANT>"
)


@dataclasses.dataclass(frozen=True)
class Span:
    """A character range of the rendered text and what produced it.

    turn: index of the ChatML turn (`<|im_start|>...<|im_end|>\\n` block, a merged tool-response turn counts once).
    role: role of the message(s) rendered there; a merged tool-response turn is "tool" throughout.
    message: index in `messages`, or -1 for text no message owns (a tools-only system turn, the generation prompt).
    supervised: the assistant's own output: reasoning, content, tool calls and the closing `<|im_end|>`.
    """

    start: int
    end: int
    turn: int
    role: str
    message: int
    supervised: bool


@dataclasses.dataclass(frozen=True)
class Rendered:
    text: str
    spans: tuple[Span, ...]  # contiguous, in order, covering all of `text`
    last_query_index: int  # index of the last real user query in `messages`


class _Writer:
    def __init__(self):
        self.parts: list[str] = []
        self.spans: list[Span] = []
        self.pos = 0

    def emit(self, text: str, *, turn: int, role: str, message: int, supervised: bool = False) -> None:
        if not text:
            return
        end = self.pos + len(text)
        last = self.spans[-1] if self.spans else None
        if last and (last.turn, last.role, last.message, last.supervised) == (turn, role, message, supervised):
            self.spans[-1] = dataclasses.replace(last, end=end)
        else:
            self.spans.append(Span(self.pos, end, turn, role, message, supervised))
        self.parts.append(text)
        self.pos = end


def _tojson(value: Any) -> str:
    # HF's template environment replaces jinja's tojson (which sorts keys and HTML-escapes) with plain json.dumps.
    return json.dumps(value, ensure_ascii=False)


def _content(message: dict) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if not isinstance(content, str):
        raise ValueError(f"message content must be a string, got {type(content).__name__} "
                         f"(multimodal content lists are not supported)")
    return content


def _argument_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return _tojson(value)
    return value if isinstance(value, str) else str(value)


def _last_query_index(messages: Sequence[dict]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user" and not is_tool_response_wrapper(_content(messages[i])):
            return i
    raise ValueError("No user query found in messages.")


def _tool_calls_text(calls: Any, content: str) -> str:
    if not calls or not isinstance(calls, (list, tuple)):
        return ""
    out = []
    for j, call in enumerate(calls):
        function = call["function"] if "function" in call else call
        if j == 0:
            out.append(("\n\n" if content.strip() else "") + "<tool_call>\n<function=" + function["name"] + ">\n")
        else:
            out.append("\n<tool_call>\n<function=" + function["name"] + ">\n")
        if "arguments" in function:
            for name, value in parse_arguments(function["arguments"]).items():
                out.append("<parameter=" + name + ">\n" + _argument_value(value) + "\n</parameter>\n")
        out.append("</function>\n</tool_call>")
    return "".join(out)


def render_spans(messages: Sequence[dict], tools: Sequence[dict] | None = None, *,
                 add_generation_prompt: bool = False, enable_thinking: bool | str = True) -> Rendered:
    """`render`, plus the character spans of every turn and which of them are supervised."""
    check_thinking(enable_thinking)
    if not messages:
        raise ValueError("No messages provided.")
    w = _Writer()
    turn = 0
    has_system = messages[0].get("role") == "system"
    if tools and isinstance(tools, (list, tuple)):
        text = "<|im_start|>system\n" + _TOOLS_HEADER + "".join("\n" + _tojson(t) for t in tools) + "\n</tools>"
        text += _TOOLS_INSTRUCTIONS
        system = _content(messages[0]).strip() if has_system else ""
        if system:
            text += "\n\n" + system
        w.emit(text + "<|im_end|>\n", turn=turn, role="system", message=0 if has_system else -1)
        turn += 1
    elif has_system:
        w.emit("<|im_start|>system\n" + _content(messages[0]).strip() + "<|im_end|>\n", turn=turn, role="system",
               message=0)
        turn += 1
    last_query = _last_query_index(messages)
    for i, message in enumerate(messages):
        role = message.get("role")
        content = _content(message).strip()
        if role == "system":
            if i != 0:
                raise ValueError("System message must be at the beginning.")
        elif role == "user":
            w.emit("<|im_start|>user\n" + content + "<|im_end|>\n", turn=turn, role="user", message=i)
            turn += 1
        elif role == "assistant":
            reasoning = message.get("reasoning_content")
            if not isinstance(reasoning, str):
                reasoning = ""
                if "</think>" in content:
                    reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
                    content = content.split("</think>")[-1].lstrip("\n")
            reasoning = reasoning.strip()
            body = ("<think>\n" + reasoning + "\n</think>\n\n" + content) if i > last_query else content
            body += _tool_calls_text(message.get("tool_calls"), content) + "<|im_end|>"
            w.emit("<|im_start|>assistant\n", turn=turn, role="assistant", message=i)
            w.emit(body, turn=turn, role="assistant", message=i, supervised=True)
            w.emit("\n", turn=turn, role="assistant", message=i)
            turn += 1
        elif role == "tool":
            if i > 0 and messages[i - 1].get("role") != "tool":
                w.emit("<|im_start|>user", turn=turn, role="tool", message=i)
            w.emit("\n<tool_response>\n" + content + "\n</tool_response>", turn=turn, role="tool", message=i)
            if i == len(messages) - 1 or messages[i + 1].get("role") != "tool":
                w.emit("<|im_end|>\n", turn=turn, role="tool", message=i)
                turn += 1
        else:
            raise ValueError("Unexpected message role.")
    if add_generation_prompt:
        think = {False: "<think>\n\n</think>\n\n", "model": ""}.get(enable_thinking, "<think>\n")
        prompt = "<|im_start|>assistant\n" + think
        w.emit(prompt, turn=turn, role="assistant", message=-1)
    return Rendered("".join(w.parts), tuple(w.spans), last_query)


def render(messages: Sequence[dict], tools: Sequence[dict] | None = None, *, add_generation_prompt: bool = False,
           enable_thinking: bool | str = True) -> str:
    """The Qwen3.5 chat-template rendering of `messages` (and `tools`), byte for byte.

    Tool-call arguments may be objects or JSON-object strings (the OpenAI wire format); strings are decoded first,
    as serving stacks do before applying the template. Raises ValueError where the template raises.
    """
    return render_spans(messages, tools, add_generation_prompt=add_generation_prompt,
                        enable_thinking=enable_thinking).text


def tokenize_trajectory(record: dict, tokenizer: Tokenizer, *, supervise: str = "all") -> dict:
    """Render a record with the Qwen3.5 template, tokenize it once, and mark what the loss trains on.

    Returns a dict of:
      id, domain   the record's (str)
      tokens       int32[N]  token ids of the rendered text
      loss_mask    uint8[N]  1 where the token is the assistant's own output: reasoning, content, tool-call block and
                             the closing `<|im_end|>`; 0 for system, user and tool-response tokens and turn headers.
                             Not shifted: token t is trained when it is the *target* (the pipeline shifts it).
      turn_ids     int32[N]  ChatML turn index of each token (a merged tool-response turn is one turn)
      roles        int8[N]   ROLE_IDS code of each token's turn (system 0, user 1, assistant 2, tool response 3)
      num_turns    int       number of turns

    supervise: "all" trains every assistant turn; "after_last_query" only the turns after the last real user query,
    the ones rendered with their `<think>` block exactly as at generation time (earlier turns lose their reasoning
    in the template, docs/spec/recipe.md §5). A conversation that ends with a user message (tau-bench's "###STOP###")
    has nothing to train in that mode.

    A token is supervised if any of its characters lies in a supervised span. With the Qwen tokenizers every span
    boundary falls on a token boundary (special tokens and newlines separate them); for other tokenizers a token
    straddling a boundary is trained rather than lost.
    """
    if supervise not in SUPERVISE_MODES:
        raise ValueError(f"supervise={supervise!r}: expected one of {', '.join(SUPERVISE_MODES)}")
    rendered = render_spans(record["messages"], record.get("tools") or None)
    ids, offsets = tokenizer.encode_with_offsets(rendered.text)
    n_chars = len(rendered.text)
    starts = np.fromiter((s.start for s in rendered.spans), np.int64, len(rendered.spans))
    supervised_chars = np.zeros(n_chars, np.int64)
    for s in rendered.spans:
        if s.supervised and (supervise == "all" or s.message > rendered.last_query_index):
            supervised_chars[s.start:s.end] = 1
    cumulative = np.concatenate([[0], np.cumsum(supervised_chars)])
    first, last = offsets[:, 0], np.maximum(offsets[:, 1], offsets[:, 0] + 1).clip(max=n_chars)
    loss_mask = (cumulative[last] - cumulative[first] > 0).astype(np.uint8)
    span_of_token = np.searchsorted(starts, np.minimum(first, n_chars - 1), side="right") - 1
    span_turns = np.fromiter((s.turn for s in rendered.spans), np.int32, len(rendered.spans))
    span_roles = np.fromiter((ROLE_IDS[s.role] for s in rendered.spans), np.int8, len(rendered.spans))
    return {
        "id": record["id"],
        "domain": record["domain"],
        "tokens": ids.astype(np.int32),
        "loss_mask": loss_mask,
        "turn_ids": span_turns[span_of_token],
        "roles": span_roles[span_of_token],
        "num_turns": int(span_turns[-1]) + 1 if len(span_turns) else 0,
    }
