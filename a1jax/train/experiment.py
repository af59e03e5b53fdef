"""Experiment files: loading `experiments/FILE.py[:arg]`, `--config.x.y=value` overrides, and up-front validation.

An experiment file is an ml_collections config whose `get_config(arg)` returns the whole experiment (see
experiments/quickstart.py for every field). `validate` turns it into typed objects (ModelConfig, PipelineConfig,
...) before anything compiles, so that a mistake is reported as the field it is in: first every field's name, type
and range (config_schema.py: an unknown field is an error), then the checks across fields (the model's vocabulary
against the tokenizer's, MTP loss against MTP layers, microbatches against the batch, the batch and sequence
against the mesh axes that do not depend on the device count), then the stage's own sections. The stages come from
the caller (a1jax/stages.py: `stages.validate` passes its table), so this module imports none of them.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import math
import os
from typing import Any, Callable

import ml_collections

from a1jax.data.pipeline import PipelineConfig, Source
from a1jax.model import presets
from a1jax.model.config import ModelConfig
from a1jax import sharding, storage
from a1jax.data import tokenizers
from a1jax.train import config_schema


def load(spec: str) -> ml_collections.ConfigDict:
    """`path/to/file.py` or `path/to/file.py:arg` -> the file's get_config(arg)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config {spec}: no such experiment file {path!r}")
    module_spec = importlib.util.spec_from_file_location(f"a1jax_experiment_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config {spec}: {path} defines no get_config(arg) function")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"--config {spec}: get_config must return an ml_collections.ConfigDict")
    for name, default in OPTIONAL_SECTIONS.items():  # so `--config.profile.steps=3` works on any experiment
        if name not in config:
            config[name] = ml_collections.ConfigDict(default)
    return config


# Sections an experiment file may leave out; their defaults (all off) are filled in by `load`.
OPTIONAL_SECTIONS = {"profile": {"start_step": 0, "steps": 0}}  # a1jax.train.metrics.Profiler


def _parse_value(text: str, current: Any, flag: str):
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{flag}: expected true or false, got {text!r}")
    if isinstance(current, str) or current is None:
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"{flag}: expected a {type(current).__name__}, got {text!r}") from None
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(current)(value)
    if not isinstance(value, type(current)):
        raise ValueError(f"{flag}: expected a {type(current).__name__}, got {text!r}")
    return value


def _parse_untyped(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, flags: list[str]) -> ml_collections.ConfigDict:
    """Applies `--config.a.b=value` flags; an unknown field or a value of the wrong type names the flag."""
    for flag in flags:
        if not flag.startswith("--config.") or "=" not in flag:
            raise ValueError(f"unrecognised flag {flag!r}: overrides look like --config.optimizer.learning_rate=3e-4")
        key, text = flag[len("--config."):].split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for i, p in enumerate(parents):
            if not isinstance(node, (ml_collections.ConfigDict, dict)) or p not in node:
                raise ValueError(f"{flag}: config has no field {'.'.join(parents[:i + 1])!r}")
            node = node[p]
        if isinstance(node, ml_collections.ConfigDict) and leaf not in node and parents[-1:] == ["overrides"]:
            node[leaf] = _parse_untyped(text)  # model.overrides takes any ModelConfig field; validate() checks it
            continue
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or leaf not in node:
            raise ValueError(f"{flag}: config has no field {key!r}")
        node[leaf] = _parse_value(text, node[leaf], flag)
    return config


@dataclasses.dataclass(frozen=True)
class Stage:
    """One row of the stage table (a1jax/stages.py): what `config.stage` names."""
    step: Callable  # the pure step(ctx, state, batch[, teacher_targets]) -> (state, metrics) (steps.py)
    source: Callable  # source(run) -> the loop's batch source (a1jax/train/loop.py: BatchSource)
    domains: Callable  # domains(exp) -> {domain name: id} of the batches' domain_ids
    inputs: int = 1  # arrays the step takes after the state: the batch [, the teacher targets]
    options: tuple | None = None  # (config section, frozen dataclass) of the step's options (ctx.options)
    settings: Callable | None = None  # settings(config, batch_size=) -> loop settings: a rollout stage
    trains_mtp: bool = False  # whether the step's loss may have the MTP term (train.mtp_loss_coef)
    sections: dict = dataclasses.field(default_factory=dict)  # its config sections' schema (config_schema.py)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The validated, typed view of an experiment config."""
    config: ml_collections.ConfigDict
    model: ModelConfig
    data: PipelineConfig
    eval_data: PipelineConfig | None
    loop: Any = None  # the stage's loop settings (rollout stages: a1jax.distill.settings.LoopSettings)
    stage: Stage | None = None
    options: Any = None  # the step's frozen options (`step_options`)


def _field(config, path: str):
    node = config
    for part in path.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            raise ValueError(f"config.{path} is missing")
        node = node[part]
    return node


def _check(cond: bool, path: str, value, expected: str):
    if not cond:
        raise ValueError(f"config.{path}={value!r}: expected {expected}")


def model_config(config) -> ModelConfig:
    preset = _field(config, "model.preset")
    _check(preset in presets.PRESETS, "model.preset", preset, f"one of {sorted(presets.PRESETS)}")
    overrides = dict(config.model.get("overrides", {}) or {})
    try:
        return presets.get(preset, **overrides)
    except TypeError as e:
        fields = sorted(f.name for f in dataclasses.fields(ModelConfig))
        raise ValueError(f"config.model.overrides: {e}; valid fields: {fields}") from None
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from None


def _pipeline(config, sources_key: str) -> PipelineConfig | None:
    d = config.data
    raw = d.get(sources_key)
    if not raw:
        return None
    base = d.get("base_dir", "") or ""
    sources = []
    for i, s in enumerate(raw):
        paths = s.get("paths") if isinstance(s, (dict, ml_collections.ConfigDict)) else None
        _check(bool(paths) and not isinstance(paths, str), f"data.{sources_key}[{i}].paths", paths,
               "a non-empty list of JSONL paths")
        paths = tuple(p if os.path.isabs(p) or storage.is_remote(p) else os.path.join(base, p) for p in paths)
        for p in paths:
            if not storage.exists(p):
                raise FileNotFoundError(f"config.data.{sources_key}[{i}].paths: no such file {p!r}")
        sources.append(Source(paths=paths, weight=float(s.get("weight", 1.0)), domain=s.get("domain")))
    kw = {f.name: d[f.name] for f in dataclasses.fields(PipelineConfig) if f.name != "sources" and f.name in d}
    if "domains" in kw:
        kw["domains"] = tuple(kw["domains"])
    if sources_key == "eval_sources":
        kw.update(num_epochs=1, batch_size=d.get("eval_batch_size", d.batch_size))
    pcfg = PipelineConfig(sources=tuple(sources), **kw)
    try:
        pcfg.validate()
    except ValueError as e:
        raise ValueError(str(e).replace("PipelineConfig.", "config.data.")) from None
    return pcfg


def _static_mesh_checks(config, model: ModelConfig, data: PipelineConfig, eval_data: PipelineConfig | None,
                        microbatches: int) -> None:
    """The mesh checks that do not need the device count (build.py repeats them on the real mesh)."""
    sizes = {a: int(config.mesh.get(a, 1)) for a in sharding.MESH_AXES}
    auto = [a for a, n in sizes.items() if n == -1]
    _check(len(auto) <= 1, "mesh", dict(sizes), "at most one axis of size -1")
    mesh = type("StaticMesh", (), {"shape": sizes})()
    if sizes["expert"] > 0 and sizes["tensor"] > 0:
        try:
            sharding.check_model_fits_mesh(model, mesh)
        except ValueError as e:
            raise ValueError(f"config.mesh: {e}") from None
    if sizes["sequence"] > 0:
        sharding.check_sequence_fits_mesh(data.seq_len, model, mesh)
    rules = sharding.merged_rules(dict(config.get("sharding_rules", {}) or {}))
    batch_axes = rules.get("batch")
    batch_axes = [a for a in (batch_axes if isinstance(batch_axes, tuple) else (batch_axes,)) if a]
    if all(sizes[a] > 0 for a in batch_axes):
        ways = math.prod(sizes[a] for a in batch_axes)
        rows = data.batch_size // microbatches
        _check(rows % ways == 0, "data.batch_size", data.batch_size,
               f"a multiple of train.microbatches={microbatches} x the {ways} batch shards of the mesh "
               f"({' x '.join(f'{a}={sizes[a]}' for a in batch_axes)})")
        if eval_data is not None:
            _check(eval_data.batch_size % ways == 0, "data.eval_batch_size", eval_data.batch_size,
                   f"a multiple of the {ways} batch shards of the mesh")


def step_options(config: ml_collections.ConfigDict, stage: Stage):
    """The frozen step options of `stage` from its config section (`config.grpo`, `config.distill`), checked by field
    name and range; None for a stage without options."""
    if stage.options is None:
        return None
    section, cls = stage.options
    raw = config.get(section) or {}
    raw = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ValueError(f"config.{section}.{key}: unknown field; valid fields: {sorted(fields)}")
    opts = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    opts.check(f"config.{section}")
    return opts


def validate(config: ml_collections.ConfigDict, stages: dict[str, Stage], *,
             check_vocabulary: bool = True) -> Experiment:
    """The typed experiment, or ValueError naming the field. `stages`: the stage table (a1jax/stages.py, whose
    `validate` passes it). `check_vocabulary=False` (a1jax plan, which compiles shapes and never reads a token) skips
    the model-vocabulary-against-tokenizer check."""
    sections = {name: schema for s in stages.values() for name, schema in s.sections.items()}
    stage = stages.get(config.get("stage"))
    config_schema.check(config, sections, needs_eval=stage is None or stage.settings is None)
    _check(stage is not None, "stage", _field(config, "stage"), f"one of the known stages {sorted(stages)}")
    model = model_config(config)
    rollout_stage = stage.settings is not None
    data = _pipeline(config, "sources")
    if data is None and rollout_stage:  # rows are packed from rollouts, not read from data.sources
        d = config.data
        data = PipelineConfig(sources=(), tokenizer=d.get("tokenizer", "qwen3_5"), seq_len=d.seq_len,
                              batch_size=d.batch_size)
    _check(data is not None, "data.sources", None, "at least one source")
    eval_data = _pipeline(config, "eval_sources")
    train = config.train
    _check(data.batch_size % train.microbatches == 0, "train.microbatches", train.microbatches,
           f"a positive divisor of data.batch_size={data.batch_size}")
    if check_vocabulary:
        try:
            n_tokens = tokenizers.vocab_size(data.tokenizer)
        except (OSError, ValueError) as e:
            raise ValueError(f"config.data.tokenizer={data.tokenizer!r}: {e}") from None
        _check(model.vocab_size >= n_tokens, "model.overrides.vocab_size", model.vocab_size,
               f">= the {n_tokens} token ids of config.data.tokenizer={data.tokenizer!r} (a smaller embedding table "
               f"makes every loss NaN)")
    for where, coef in (("train.mtp_loss_coef", train.mtp_loss_coef), ("model.overrides.mtp_loss_coef",
                                                                        model.mtp_loss_coef)):
        _check(coef == 0 or model.mtp_num_hidden_layers > 0, where, coef,
               "0 when the model has no MTP layers (model.overrides.mtp_num_hidden_layers=0)")
    mtp = " and ".join(name for name, s in stages.items() if s.trains_mtp)
    _check(train.mtp_loss_coef == 0 or stage.trains_mtp, "train.mtp_loss_coef", train.mtp_loss_coef,
           f"0 for stage {config.stage!r}, whose loss has no MTP term (stages {mtp} train the MTP module)")
    _static_mesh_checks(config, model, data, eval_data, train.microbatches)
    options = step_options(config, stage)  # config.distill / config.grpo ranges, up front
    loop = stage.settings(config, batch_size=data.batch_size) if rollout_stage else None
    return Experiment(config=config, model=model, data=data, eval_data=eval_data, loop=loop, stage=stage,
                      options=options)
