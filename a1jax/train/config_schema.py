"""Every field an experiment file may set, its type and range: checked before anything is built or compiled.

`check(config)` walks the whole config: a field no section defines is an error naming the field and the known ones
(so `c.optimizer.lr = 1e-3` is refused, not silently ignored), a missing required field is an error, and a value of
the wrong type or out of range is an error naming the field and what was expected. Numbers must be finite; integers
are never bools. The sections of the stages (envs, rollout, teachers, expert_iteration, gate, distill, grpo) come from
the stage table (a1jax/stages.py), which takes their field names and types from the dataclasses that read them
(a1jax/distill/settings.py, a1jax/distill/steps.py), whose own checks then give the ranges; model.overrides takes
ModelConfig's fields and types. A schema in a one-element list is that of each dict of a list (config.teachers).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import ml_collections

from a1jax.data import packing
from a1jax.data.chat import SUPERVISE_MODES
from a1jax.data.pipeline import MAX_SEQ_LEN
from a1jax.model.config import ModelConfig
from a1jax.sharding import MESH_AXES
from a1jax.train import optim

EP_TRANSPORTS = ("auto", "ragged", "all_to_all")


@dataclasses.dataclass(frozen=True)
class Spec:
    ok: Callable[[Any], bool]
    expected: str
    required: bool = False


def required(spec: Spec) -> Spec:
    return dataclasses.replace(spec, required=True)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _bounds(lo, hi, lo_open, hi_open) -> tuple[Callable[[Any], bool], str]:
    parts = []
    if lo is not None and hi is not None:
        parts.append(f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")
    elif lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    elif hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")

    def ok(v):
        return ((lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi)))
    return ok, " and ".join(parts)


def integer(lo=None, hi=None) -> Spec:
    ok, text = _bounds(lo, hi, False, False)
    return Spec(lambda v: _is_int(v) and ok(v), "an integer" + (f" {text}" if text else ""))


def number(lo=None, hi=None, *, lo_open=False, hi_open=False) -> Spec:
    ok, text = _bounds(lo, hi, lo_open, hi_open)
    return Spec(lambda v: _is_number(v) and ok(v), "a finite number" + (f" {text}" if text else ""))


def boolean() -> Spec:
    return Spec(lambda v: isinstance(v, bool), "true or false")


def text(choices: tuple | None = None, *, nonempty: bool = False) -> Spec:
    if choices:
        return Spec(lambda v: isinstance(v, str) and v in choices, f"one of {tuple(choices)}")
    return Spec(lambda v: isinstance(v, str) and (bool(v) or not nonempty),
                "a non-empty string" if nonempty else "a string")


def optional(spec: Spec) -> Spec:
    return Spec(lambda v: v is None or spec.ok(v), f"None or {spec.expected}")


def list_of(spec: Spec | None = None, *, what: str = "values") -> Spec:
    return Spec(lambda v: isinstance(v, (list, tuple)) and (spec is None or all(spec.ok(x) for x in v)),
                f"a list of {what}" + (f" (each {spec.expected})" if spec else ""))


def mapping() -> Spec:
    return Spec(lambda v: isinstance(v, (dict, ml_collections.ConfigDict)), "a dict")


def anything() -> Spec:
    return Spec(lambda v: True, "anything")


_BY_NAME = {"int": integer(), "float": number(), "bool": boolean(), "str": text(), "tuple": list_of(),
            "list": list_of(), "dict": mapping(), "None": Spec(lambda v: v is None, "None"), "Any": anything()}


def from_annotation(annotation: str) -> Spec:
    """A spec from a dataclass field's annotation string (`int`, `bool | str`, `tuple[str, ...] | None`, ...)."""
    specs = [_BY_NAME.get(part.strip().split("[")[0], anything()) for part in str(annotation).split("|")]
    if len(specs) == 1:
        return specs[0]
    return Spec(lambda v: any(s.ok(v) for s in specs), " or ".join(s.expected for s in specs))


def dataclass_fields(cls) -> dict[str, Spec]:
    return {f.name: from_annotation(f.type) for f in dataclasses.fields(cls)}


def _sections(stage_sections: dict) -> dict:
    """The schema: section -> {field: Spec or sub-schema}, with the stages' own sections."""
    source = {"paths": required(list_of(text(nonempty=True), what="paths")), "weight": number(0, lo_open=True),
              "domain": optional(text(nonempty=True))}
    return {
        "stage": required(text(nonempty=True)),
        "seed": integer(0, 2**32 - 1),
        "model": {"preset": required(text(nonempty=True)),
                  "overrides": {name: spec for name, spec in dataclass_fields(ModelConfig).items()}},
        "data": {
            "base_dir": text(), "sources": list_of(mapping(), what="source dicts"),
            "eval_sources": list_of(mapping(), what="source dicts"), "tokenizer": text(nonempty=True),
            "seq_len": required(integer(2, MAX_SEQ_LEN)), "batch_size": required(integer(1)),
            "eval_batch_size": integer(1), "packing": text(packing.PACKING_ALGORITHMS),
            "overlong": text(packing.OVERLONG_POLICIES), "supervise": text(SUPERVISE_MODES),
            "num_epochs": optional(integer(1)), "seed": integer(0, 2**32 - 1), "cache_dir": text(nonempty=True),
            "domains": list_of(text(nonempty=True), what="domain names"), "strict": boolean(),
        },
        "mesh": {axis: Spec(lambda v: _is_int(v) and (v >= 1 or v == -1), "a positive integer or -1 (all the "
                                                                           "remaining devices)")
                 for axis in MESH_AXES},
        "mesh_dcn": {axis: integer(1) for axis in MESH_AXES},
        "sharding_rules": mapping(),  # sharding.merged_rules checks names against the mesh axes
        "ep_transport": text(EP_TRANSPORTS),
        "optimizer": {
            "learning_rate": required(number(0, lo_open=True)), "warmup_steps": required(integer(0)),
            "schedule": required(text(optim.SCHEDULES)), "min_lr_ratio": required(number(0, 1)),
            "weight_decay": required(number(0)), "b1": required(number(0, 1, hi_open=True)),
            "b2": required(number(0, 1, hi_open=True)), "eps": required(number(0, lo_open=True)),
            "clip_norm": required(number(0)),  # 0 turns clipping off
        },
        "train": {
            "steps": required(integer(1)), "microbatches": required(integer(1)), "log_every": required(integer(1)),
            "z_loss_coef": required(number(0)), "mtp_loss_coef": required(number(0)),
            "max_consecutive_skips": required(integer(1)),
        },
        "eval": {"every": required(integer(0)), "batches": required(integer(1))},
        "checkpoint": {"every": required(integer(1)), "keep": required(integer(1)), "async_save": required(boolean())},
        "profile": {"start_step": integer(0), "steps": integer(0)},  # a1jax.train.metrics.Profiler; steps=0: off
        "init_from": text(),
        "envs_eval": mapping(),  # a1jax.envs.evaluate.settings checks its keys
        **stage_sections,
    }, source


def _is_section(value) -> bool:
    return isinstance(value, (dict, ml_collections.ConfigDict))


def check_fields(node, schema: dict, where: str) -> None:
    """Unknown, missing and ill-typed fields of one (nested) section, named by their full path."""
    for key in node.keys():
        path = f"{where}.{key}"
        if key not in schema:
            raise ValueError(f"{path}: unknown field; the known fields of {where} are {sorted(schema)}")
        spec, value = schema[key], node[key]
        if isinstance(spec, list):
            if not isinstance(value, (list, tuple)) or not all(_is_section(v) for v in value):
                raise ValueError(f"{path}={value!r}: expected a list of dicts of fields {sorted(spec[0])}")
            for i, item in enumerate(value):
                check_fields(item, spec[0], f"{path}[{i}]")
        elif isinstance(spec, dict):
            if not _is_section(value):
                raise ValueError(f"{path}={value!r}: expected a section (a dict of fields {sorted(spec)})")
            check_fields(value, spec, path)
        elif not spec.ok(value):
            raise ValueError(f"{path}={value!r}: expected {spec.expected}")
    for key, spec in schema.items():
        if isinstance(spec, Spec) and spec.required and key not in node:
            raise ValueError(f"{where}.{key} is missing (expected {spec.expected})")


def check(config, stage_sections: dict, *, needs_eval: bool = True) -> None:
    """Every field of the experiment config against the schema (see the module docstring); `stage_sections`: the
    stages' own sections, `needs_eval`: whether config.eval is required (not for the rollout stages)."""
    schema, source = _sections(stage_sections)
    check_fields(config, schema, "config")
    needed = ("optimizer", "train", "checkpoint", "mesh") + (("eval",) if needs_eval else ())
    for name in needed:
        if name not in config:
            raise ValueError(f"config.{name} is missing (a section of fields {sorted(schema[name])})")
    data = config.get("data")
    if data is None:
        raise ValueError(f"config.data is missing (a section of fields {sorted(schema['data'])})")
    for key in ("sources", "eval_sources"):
        for i, s in enumerate(data.get(key) or []):
            check_fields(s, source, f"config.data.{key}[{i}]")
