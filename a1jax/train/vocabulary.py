"""Which vocabulary a training workdir was trained with, and refusing the wrong one.

Every run writes WORKDIR/vocabulary.json (tokenizer name, vocabulary size, fingerprint of the tokenizer's source
files and id list). A model is only meaningful with the token ids it was trained on: a checkpoint trained on the
compact tiny-recipe vocabulary read with the full Qwen3.5 ids (or the other way round) produces fluent-looking
garbage rather than an error. So resuming, `init_from`, a local teacher and the report check the file against the
tokenizer they are about to use, and say both names when they differ.
"""
from __future__ import annotations

import json
import os

from a1jax import storage

FILE = "vocabulary.json"


def describe(tok) -> dict:
    return {"tokenizer": tok.name, "vocab_size": int(tok.vocab_size), "fingerprint": tok.fingerprint}


def recorded(workdir: str) -> dict | None:
    """The vocabulary WORKDIR recorded (None: not a workdir, or one written before vocabularies were recorded)."""
    path = os.path.join(workdir, FILE)
    if not storage.isfile(path):
        return None
    return storage.read_json(path)


def check(workdir: str, tok, role: str) -> None:
    """Raises ValueError when WORKDIR was trained with another vocabulary than `tok`; `role` says what it is used as
    ("resume", "init_from", "teacher", ...)."""
    got = recorded(workdir)
    if got is None:  # a workdir from before vocabularies were recorded: its config names the tokenizer
        config = os.path.join(workdir, "config.json")
        if not storage.isfile(config):
            return
        name = (storage.read_json(config).get("data") or {}).get("tokenizer")
        if name is None or name == tok.name:
            return
        got = {"tokenizer": name, "vocab_size": "?", "fingerprint": "?" * 12}
    if got["fingerprint"] == tok.fingerprint:
        return
    raise ValueError(
        f"{role} {workdir}: trained with vocabulary {got['tokenizer']!r} ({got['vocab_size']} ids, fingerprint "
        f"{got['fingerprint'][:12]}), but this run uses {tok.name!r} ({tok.vocab_size} ids, fingerprint "
        f"{tok.fingerprint[:12]}); token ids would not mean the same thing. Use config.data.tokenizer="
        f"{got['tokenizer']!r}, or start from a checkpoint trained with {tok.name!r}")


def record(workdir: str, tok) -> None:
    """Writes WORKDIR/vocabulary.json (call `check` first when the workdir may hold a run already)."""
    storage.write_atomic(os.path.join(workdir, FILE), json.dumps(describe(tok), indent=1))


def guard(workdir: str, init_from: str, tokenizer: str) -> None:
    """At the start of a run: the workdir (when resuming) and the `init_from` checkpoint must have been trained with
    the run's tokenizer; then WORKDIR records it."""
    import jax

    from a1jax.data import tokenizers
    tok = tokenizers.load(tokenizer)
    if init_from and storage.isdir(init_from):
        check(init_from, tok, "init_from")
    check(workdir, tok, "resume")
    if jax.process_index() == 0:
        record(workdir, tok)
