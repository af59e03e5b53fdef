"""Directory conversions: a HF model directory <-> an a1jax orbax checkpoint.

An a1jax checkpoint directory holds `params/` (orbax, the *unboxed* params tree; axis names are recomputed from the
config on load) and `model_config.json` (`ModelConfig.to_dict()`). A HF directory holds `config.json` plus
`*.safetensors`, optionally sharded with `model.safetensors.index.json`.

The a1jax side may be a URL (`gs://bucket/ckpt`, through `a1jax.storage`; orbax writes the arrays); the HF side is
a local directory (its safetensors are memory-mapped).
"""
from __future__ import annotations

import glob
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from a1jax import storage
from a1jax.convert import safetensors
from a1jax.convert.hf import Assembler, hf_tensors, infer_config
from a1jax.convert.hf_config import config_to_hf
from a1jax.model.config import ModelConfig
from a1jax.model.params import Param, ParamSpec, param_specs, unbox

PARAMS, MODEL_CONFIG = "params", "model_config.json"
HF_CONFIG, HF_INDEX, HF_SINGLE = "config.json", "model.safetensors.index.json", "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 1000 ** 3  # the size HF's save_pretrained uses


def _require_dir(path: str, what: str) -> None:
    if not storage.isdir(path):
        raise FileNotFoundError(f"{what} directory {path} does not exist")


def _read_json(path: str) -> dict:
    if not storage.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    try:
        return storage.read_json(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def safetensors_files(hf_dir: str) -> list[str]:
    """The shards named by the index, else every *.safetensors in the directory."""
    index = os.path.join(hf_dir, HF_INDEX)
    if os.path.isfile(index):
        names = sorted(set(_read_json(index).get("weight_map", {}).values()))
        files = [os.path.join(hf_dir, n) for n in names]
        absent = [f for f in files if not os.path.isfile(f)]
        if absent:
            raise FileNotFoundError(f"{index} names shard(s) that do not exist: {absent}")
    else:
        files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {hf_dir}")
    return files


def read_hf_dir(hf_dir: str) -> tuple[ModelConfig, dict]:
    """Streams a HF directory into boxed a1jax params: tensors are memory-mapped and copied into place one at a
    time, so peak memory is about one copy of the model."""
    _require_dir(hf_dir, "HF model")
    hf_config = _read_json(os.path.join(hf_dir, HF_CONFIG))
    files = safetensors_files(hf_dir)
    infos, where = {}, {}
    for f in files:
        for name, info in safetensors.tensor_infos(f).items():
            if name in where:
                raise ValueError(f"tensor {name!r} is stored twice: in {where[name]} and {f}")
            infos[name], where[name] = info, f
    cfg = infer_config(hf_config, infos)
    asm = Assembler(cfg)
    for f in files:
        for name, array in safetensors.iter_tensors(f):
            asm.add(name, array)
    try:
        return cfg, asm.finish()
    except ValueError as e:
        raise ValueError(f"{hf_dir}: {e}") from None


def save_params(ckpt_dir: str, cfg: ModelConfig, params) -> None:
    """Writes `ckpt_dir/params` (orbax) and `ckpt_dir/model_config.json`."""
    target = storage.abspath(os.path.join(ckpt_dir, PARAMS))
    if storage.exists(target):
        raise ValueError(f"{target} already exists; choose another output directory or remove it")
    storage.makedirs(ckpt_dir)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(target, unbox(params))
        ckptr.wait_until_finished()
    storage.write_atomic(os.path.join(ckpt_dir, MODEL_CONFIG), json.dumps(cfg.to_dict(), indent=2))


def load_params(ckpt_dir: str, shardings=None) -> tuple[ModelConfig, dict]:
    """(cfg, boxed params) from a directory written by `save_params`. With `shardings` (a tree of
    jax.sharding.Sharding matching the unboxed params) each array is restored straight onto its devices; without,
    leaves come back as host numpy arrays."""
    _require_dir(ckpt_dir, "a1jax checkpoint")
    cfg = ModelConfig.from_dict(_read_json(os.path.join(ckpt_dir, MODEL_CONFIG)))
    specs = param_specs(cfg)
    is_spec = lambda x: isinstance(x, ParamSpec)
    dtype = lambda s: np.dtype(s.dtype or cfg.param_dtype)
    if shardings is None:
        abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype(s)), specs, is_leaf=is_spec)
    else:
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype(s), sharding=sh), specs, shardings,
                                is_leaf=is_spec)
    path = storage.abspath(os.path.join(ckpt_dir, PARAMS))
    if not storage.isdir(path):
        raise FileNotFoundError(f"{path} not found (not an a1jax checkpoint)")
    with ocp.StandardCheckpointer() as ckptr:
        values = ckptr.restore(path, abstract)
    return cfg, jax.tree.map(lambda s, v: Param(v, s.axes), specs, values, is_leaf=is_spec)


def _shards(tensors: list, max_bytes: int) -> list[list]:
    """Greedy packing in checkpoint order; a tensor larger than max_bytes gets a shard of its own."""
    shards, size = [[]], 0
    for t in tensors:  # (HfTensor, build, dtype)
        n = int(np.prod(t[0].shape)) * t[2].itemsize
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += n
    return shards


def write_hf_dir(out_dir: str, cfg: ModelConfig, params, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Writes config.json and model.safetensors (or model-0000i-of-0000n.safetensors plus the index when larger than
    `max_shard_bytes`); builds one shard at a time. Returns the safetensors file names."""
    stale = sorted(glob.glob(os.path.join(out_dir, "*.safetensors")) + glob.glob(os.path.join(out_dir, HF_INDEX)))
    if stale:  # a leftover shard or index would be loaded alongside the new files
        raise ValueError(f"{out_dir} already holds a checkpoint ({os.path.basename(stale[0])}, ...); choose an empty "
                         "output directory")
    tensors = hf_tensors(cfg, params)
    os.makedirs(out_dir, exist_ok=True)
    shards = _shards(tensors, max_shard_bytes)
    n = len(shards)
    names = [HF_SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map, total = {}, 0
    for name, shard in zip(names, shards):
        data = {t.name: build() for t, build, _ in shard}
        safetensors.save_file(os.path.join(out_dir, name), data, metadata={"format": "pt"})
        for k, v in data.items():
            weight_map[k] = name
            total += v.nbytes
        del data
    if n > 1:
        with open(os.path.join(out_dir, HF_INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    hf_config = config_to_hf(cfg)
    hf_config["dtype"] = str(tensors[0][2])  # embed_tokens: the checkpoint's dtype
    with open(os.path.join(out_dir, HF_CONFIG), "w") as f:
        json.dump(hf_config, f, indent=2)
    return names
