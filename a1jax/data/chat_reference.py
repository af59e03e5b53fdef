"""Reference rendering with jinja2 and the official Qwen3.5 chat_template.jinja: what `chat.render` must equal.

The environment mirrors the one HF `apply_chat_template` builds (and vLLM/SGLang reuse): a sandboxed jinja2
environment with `trim_blocks`, `lstrip_blocks` and the loop-controls extension, `raise_exception`, and a `tojson`
that is plain `json.dumps(ensure_ascii=False)` (jinja's own sorts keys and HTML-escapes `<>&'`). Tool-call
arguments given as JSON strings are decoded first, because the template iterates them with `|items`.

jinja2 is a test-time dependency only; nothing in the training path imports this module.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Sequence

from a1jax.data.schema import parse_arguments
from a1jax.data.tokenizers import asset_dir


def template_path() -> Path:
    return asset_dir("qwen3_5") / "chat_template.jinja"


@functools.lru_cache(maxsize=1)
def _template():
    try:
        import jinja2.ext
        import jinja2.sandbox
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the reference renderer needs jinja2 (pip install 'a1jax[test]')") from e

    def raise_exception(message):
        raise ValueError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template_path().read_text(encoding="utf-8"))


def _decode_arguments(messages: Sequence[dict]) -> list[dict]:
    messages = copy.deepcopy(list(messages))
    for message in messages:
        for call in message.get("tool_calls") or []:
            function = call["function"] if "function" in call else call
            if "arguments" in function:
                function["arguments"] = parse_arguments(function["arguments"])
    return messages


def render_reference(messages: Sequence[dict], tools: Sequence[dict] | None = None, *,
                     add_generation_prompt: bool = False, enable_thinking: bool = True) -> str:
    return _template().render(messages=_decode_arguments(messages), tools=tools,
                              add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking)
