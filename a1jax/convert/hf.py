"""HF state dict <-> a1jax params: `from_hf`, `to_hf`, and the `Assembler` that both `from_hf` and the streaming
directory converter use to place tensors that arrive one at a time.

Leaves are host numpy arrays (`jax.device_put(params, shardings)` places them); A_log and dt_bias are float32 whatever
the file stores, as in param_specs. All problems with a state dict (missing, unexpected, mis-shaped, non-float,
duplicate tensors) are collected and raised together, so one run shows everything that is wrong with a checkpoint.
"""
from __future__ import annotations

import collections
import re
import warnings
from typing import Callable, Mapping

import jax
import ml_dtypes
import numpy as np

from a1jax.convert import layout
from a1jax.convert.hf_config import config_from_hf, config_to_hf
from a1jax.model.config import ModelConfig
from a1jax.model.params import Param, ParamSpec, param_specs, unbox

_PARAM_DTYPES = {np.dtype(np.float32): "float32", np.dtype(ml_dtypes.bfloat16): "bfloat16",
                 np.dtype(np.float16): "float16"}
_FLOAT_DTYPES = (*_PARAM_DTYPES, np.dtype(np.float64))
_MTP_LAYER = re.compile(r"^mtp\.layers\.(\d+)\.")
_FLOAT32_LEAVES = ("A_log", "dt_bias")


def canonical_name(key: str) -> str | None:
    """The `Qwen3_5MoeForCausalLM` name of a HF key, or None for tensors a text model does not use (the vision
    tower). `model.language_model.` is the VLM / hub spelling (docs/spec/model.md §3.1)."""
    if key.startswith("model.visual.") or key.startswith("visual."):
        return None
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


def _shape(x) -> str:
    return str(list(x))


def _is_float(dtype) -> bool:
    return np.dtype(dtype) in _FLOAT_DTYPES


def _lossless(src, dst) -> bool:
    src, dst = np.dtype(src), np.dtype(dst)
    return src == dst or (dst == np.float32 and src.itemsize == 2) or dst == np.float64


def infer_config(hf_config: dict, infos: Mapping[str, tuple]) -> ModelConfig:
    """ModelConfig from a HF config plus the (dtype, shape) of every tensor, read before any tensor data: MTP depth
    from the mtp.layers.* present, param_dtype from the dtype holding most elements (A_log/dt_bias aside)."""
    names = [n for n in (canonical_name(k) for k in infos) if n is not None]
    mtp = {int(m.group(1)) for n in names if (m := _MTP_LAYER.match(n))}
    elements: dict[np.dtype, int] = collections.Counter()
    for key, (dtype, shape) in infos.items():
        name = canonical_name(key)
        if name is not None and _is_float(dtype) and not name.endswith(_FLOAT32_LEAVES):
            elements[np.dtype(dtype)] += int(np.prod(shape))
    dtype = max(elements, key=elements.get) if elements else np.dtype("float32")
    if dtype not in _PARAM_DTYPES:
        raise ValueError(f"the weights are stored as {dtype}; a1jax params must be one of "
                         f"{sorted(_PARAM_DTYPES.values())} (convert the checkpoint first)")
    return config_from_hf(hf_config, mtp_layers=max(mtp) + 1 if mtp else 0, param_dtype=_PARAM_DTYPES[dtype])


def _spec_table(cfg: ModelConfig) -> dict[tuple, ParamSpec]:
    """params path (tuple of dict keys and list indices) -> ParamSpec."""
    flat = jax.tree_util.tree_flatten_with_path(param_specs(cfg), is_leaf=lambda x: isinstance(x, ParamSpec))[0]
    return {tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path): spec for path, spec in flat}


def _slab_shape(shape: tuple, index: tuple) -> tuple:
    return np.broadcast_to(np.empty((), np.int8), shape)[index].shape


class Assembler:
    """Builds the a1jax params of `cfg` from HF tensors fed one at a time with `add`; `finish` checks coverage.

    Per-expert tensors are written straight into their slot of the fused expert arrays, so a layer's experts are
    never held twice."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.specs = _spec_table(cfg)
        self.canonical = {t.name: t for t in layout.hf_layout(cfg)}
        self.alternatives = {t.name: t for t in layout.per_expert_layout(cfg)}
        self.leaves: dict[tuple, np.ndarray] = {}
        self.given: dict[str, str] = {}  # canonical name -> key as given
        self.errors: list[str] = []
        self.narrowed: list[str] = []

    def _leaf(self, path: tuple) -> np.ndarray:
        if path not in self.leaves:
            spec = self.specs[path]
            self.leaves[path] = np.empty(spec.shape, spec.dtype or self.cfg.param_dtype)
        return self.leaves[path]

    def add(self, key: str, value) -> None:
        name = canonical_name(key)
        if name is None:
            return
        if name == "lm_head.weight" and self.cfg.tie_word_embeddings:
            return  # HF ties it to embed_tokens on load; a saved copy carries no information
        t = self.canonical.get(name) or self.alternatives.get(name)
        x = np.asarray(value)
        if t is None:
            self.errors.append(f"unexpected tensor {key!r} with shape {_shape(x.shape)}")
            return
        if name in self.given:
            self.errors.append(f"tensor {key!r} given twice (also as {self.given[name]!r})")
            return
        self.given[name] = key  # even when rejected below: report it once, as bad, not also as missing
        if tuple(x.shape) != t.shape:
            self.errors.append(f"tensor {key!r} has shape {_shape(x.shape)}, expected {_shape(t.shape)}")
            return
        if not _is_float(x.dtype):
            self.errors.append(f"tensor {key!r} has dtype {x.dtype}; supported: float16, bfloat16, float32, "
                               "float64")
            return
        leaves = [self._leaf(p.path) for p in t.pieces]
        if not _lossless(x.dtype, leaves[0].dtype):
            self.narrowed.append(key)
        for p, leaf in zip(t.pieces, leaves):
            leaf[p.index] = layout.piece_to_jax(p.kind, x[p.rows], _slab_shape(leaf.shape, p.index))

    def _coverage_problems(self) -> list[str]:
        groups = collections.defaultdict(list)
        for t in self.alternatives.values():
            groups[t.fused].append(t.name)
        problems = []
        for name in self.canonical:
            alts = groups.get(name, [])
            used = [a for a in alts if a in self.given]
            if name in self.given:
                problems += [f"tensor {self.given[a]!r} duplicates the fused {self.given[name]!r}" for a in used]
            elif used:
                problems += [f"missing tensor {a!r} (other experts of this layer are given per expert)"
                             for a in alts if a not in self.given]
            else:
                problems.append(f"missing tensor {name!r} with shape {_shape(self.canonical[name].shape)}")
        return problems

    def finish(self):
        """The boxed params tree; raises one ValueError naming every problem seen."""
        errors = self.errors + self._coverage_problems()
        if errors:
            raise ValueError(f"{len(errors)} problem(s) converting the HF state dict:\n  " + "\n  ".join(errors))
        if self.narrowed:
            warnings.warn(f"{len(self.narrowed)} tensor(s) were narrowed to param_dtype={self.cfg.param_dtype}: "
                          f"{self.narrowed[:8]}{' ...' if len(self.narrowed) > 8 else ''}", stacklevel=2)
        specs = param_specs(self.cfg)
        paths = _spec_table(self.cfg)
        leaves = [Param(self.leaves[p], s.axes) for p, s in paths.items()]
        return jax.tree.unflatten(jax.tree.structure(specs, is_leaf=lambda x: isinstance(x, ParamSpec)), leaves)


def from_hf(state_dict: Mapping[str, np.ndarray], hf_config: dict) -> tuple[ModelConfig, dict]:
    """HF tensors (any of the accepted spellings) + parsed config.json -> (ModelConfig, boxed a1jax params)."""
    infos = {k: (np.asarray(v).dtype, np.shape(v)) for k, v in state_dict.items()}
    cfg = infer_config(hf_config, infos)
    asm = Assembler(cfg)
    for key, value in state_dict.items():
        asm.add(key, value)
    return cfg, asm.finish()


def _get(tree, path: tuple):
    for k in path:
        tree = tree[k]
    return tree


def hf_tensors(cfg: ModelConfig, params) -> list[tuple[layout.HfTensor, Callable[[], np.ndarray], np.dtype]]:
    """(HF tensor, function building it, its dtype) for every tensor of the HF checkpoint, in HF order; lazy so that
    a writer can hold one shard at a time. Checks the params tree against param_specs first."""
    plain = unbox(params)
    errors = []
    for path, spec in _spec_table(cfg).items():
        try:
            shape = tuple(np.shape(_get(plain, path)))
        except (KeyError, IndexError, TypeError):
            errors.append(f"params lack {'/'.join(map(str, path))} (shape {_shape(spec.shape)})")
            continue
        if shape != spec.shape:
            errors.append(f"params {'/'.join(map(str, path))} has shape {_shape(shape)}, expected "
                          f"{_shape(spec.shape)}")
    if errors:
        raise ValueError("params do not match the ModelConfig:\n  " + "\n  ".join(errors))

    def build(t: layout.HfTensor) -> np.ndarray:
        leaves = [np.asarray(_get(plain, p.path)) for p in t.pieces]
        out = np.empty(t.shape, leaves[0].dtype)
        for p, leaf in zip(t.pieces, leaves):
            rows = out[p.rows]
            rows[...] = layout.piece_to_hf(p.kind, leaf[p.index], rows.shape)
        return out

    return [(t, lambda t=t: build(t), np.dtype(_get(plain, t.pieces[0].path).dtype)) for t in layout.hf_layout(cfg)]


def to_hf(cfg: ModelConfig, params) -> tuple[dict[str, np.ndarray], dict]:
    """a1jax params (boxed or plain) -> (HF `Qwen3_5MoeForCausalLM` state dict with fused experts and mtp.* when the
    config has MTP, HF text config dict). The exact inverse of `from_hf`."""
    tensors = hf_tensors(cfg, params)
    state_dict = {t.name: build() for t, build, _ in tensors}
    hf_config = config_to_hf(cfg)
    hf_config["dtype"] = str(tensors[0][2])  # embed_tokens: the checkpoint's dtype
    return state_dict, hf_config
