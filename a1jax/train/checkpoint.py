"""Checkpoints: orbax, asynchronous, atomic, keeping the last K, with fallback past a damaged one.

A checkpoint at WORKDIR/checkpoints/<step>/ holds the train state (params, optimizer state, step, rng, counters),
the data iterator state of every process and the experiment config. Orbax writes into a temporary directory and
renames it when the write completes, so a run killed mid-save leaves the previous checkpoints intact and the partial
one invisible.

Multi-process runs: every process calls `save` and `restore`. Orbax writes each array shard from the process that
holds it and commits from process 0; restoring reads onto whatever shardings the abstract state carries, so a
checkpoint written on one mesh restores onto another. The `data` item holds one iterator state per process
(`{"processes": [state_0, state_1, ...]}`, gathered at save: orbax writes JSON items from process 0 only); each
process gets its own back.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from a1jax import distributed

log = logging.getLogger("a1jax.train")


class CheckpointError(RuntimeError):
    pass


class CheckpointMismatch(ValueError):
    """The checkpoint is readable but not what this run needs (another model, another process count): never
    treated as damage, so nothing is set aside."""


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        handlers = dict(state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
                        config=ocp.JsonCheckpointHandler())  # registered up front, so metadata reads work
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, data_state: Any, config: dict, *, force: bool = False) -> bool:
        """Every process calls this with its own `data_state` (a collective in multi-process runs)."""
        data = {"processes": distributed.allgather_json(data_state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
                                  config=ocp.args.JsonSave(config))
        return self._manager.save(int(step), args=args, force=force)

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.close()

    def _set_aside(self, step: int):
        """Moves a damaged checkpoint out of the step sequence (kept for inspection, never deleted)."""
        path = os.path.join(self.directory, str(step))
        if jax.process_index() == 0 and os.path.isdir(path):
            os.replace(path, os.path.join(self.directory, f"damaged-{step}"))
        distributed.barrier(f"a1jax_set_aside_{step}")  # no process re-lists the steps before the rename
        self._manager.reload()

    def check_model(self, step: int, abstract_state) -> None:
        """Raises CheckpointMismatch naming the arrays whose path or shape differ from `abstract_state`. A
        checkpoint whose metadata cannot be read passes here and fails (as damaged) in the restore."""
        try:
            saved = _shapes(self._manager.item_metadata(int(step))["state"].tree)
        except Exception:  # noqa: BLE001
            return
        want = _shapes(abstract_state)
        keys = sorted(set(saved) | set(want), key=lambda k: (not k.startswith("params/"), k))  # params first
        diff = [f"{k}: checkpoint {saved.get(k, 'missing')} vs model {want.get(k, 'missing')}"
                for k in keys if saved.get(k) != want.get(k)]
        if diff:
            more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
            raise CheckpointMismatch(f"checkpoint {os.path.join(self.directory, str(step))} holds a different model "
                                     f"than this run's config.model: {'; '.join(diff[:5])}{more}")

    def restore(self, step: int, abstract_state, *, data: bool = True):
        """(state, this process's data state or None, config) of one step, the state on the shardings of
        `abstract_state` (ShapeDtypeStructs with `.sharding`: any mesh, any device count). `data=False` skips
        the iterator state (e.g. to read params with another process count)."""
        self.check_model(step, abstract_state)
        items = dict(state=ocp.args.StandardRestore(abstract_state), config=ocp.args.JsonRestore())
        if data:
            items["data"] = ocp.args.JsonRestore()
        out = self._manager.restore(int(step), args=ocp.args.Composite(**items))
        return out["state"], (_this_process(out["data"], step) if data else None), out["config"]

    def restore_latest(self, abstract_state, *, data: bool = True):
        """Newest checkpoint that restores cleanly; a damaged one is reported and skipped. None if there is none."""
        errors = []
        for step in reversed(self.steps()):
            try:
                state, data_state, config = self.restore(step, abstract_state, data=data)
                if errors:
                    log.warning("restored checkpoint %d after skipping damaged ones: %s", step, "; ".join(errors))
                return step, state, data_state, config
            except CheckpointMismatch:
                raise
            except Exception as e:  # noqa: BLE001 - any other failure to read a checkpoint means "damaged"
                path = os.path.join(self.directory, str(step))
                first_line = str(e).splitlines()[0] if str(e) else ""
                msg = f"checkpoint {path} is damaged or incompatible ({type(e).__name__}: {first_line})"
                log.error("%s; trying the previous one", msg)
                errors.append(msg)
                self._set_aside(step)
        if errors:
            raise CheckpointError(f"no checkpoint in {self.directory} could be restored:\n  " + "\n  ".join(errors))
        return None


def _this_process(data, step: int):
    """This process's entry of the saved per-process data states (older checkpoints: one bare state)."""
    if not (isinstance(data, dict) and set(data) == {"processes"}):
        return data
    states, n = data["processes"], jax.process_count()
    if len(states) != n:
        raise CheckpointMismatch(f"checkpoint {step} holds the data iterator states of {len(states)} processes, but "
                                 f"this run has {n}: resume with {len(states)} processes (a process's position in "
                                 f"the data cannot be re-split)")
    return states[jax.process_index()]


def _shapes(tree) -> dict[str, tuple]:
    """'params/embed/value' -> shape, for a tree of arrays, ShapeDtypeStructs or orbax ArrayMetadata."""
    def name(k):
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, "shape")}


def save_json(path: str, obj) -> None:
    """Atomic small-file write (config.json and the like): write a temp file, then rename."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def abstract_with_shardings(abstract_state, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)


def load_trained_params(workdir: str, step: int | None = None):
    """(ModelConfig, params) from a training workdir (WORKDIR/config.json + WORKDIR/checkpoints), e.g. to roll out
    or evaluate a stage-1 model. Uses the newest readable checkpoint unless `step` is given."""
    import functools

    import ml_collections

    from a1jax.train import experiment, optim
    from a1jax.train.state import init_state

    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{workdir} is not a training workdir: no config.json")
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    cfg = experiment.model_config(config)
    opt = config.optimizer
    opt.total_steps = config.train.steps
    tx, _ = optim.make_optimizer(opt)
    abstract = jax.eval_shape(functools.partial(init_state, cfg, tx), jax.random.key(0))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        if step is None:
            restored = ckpt.restore_latest(abstract, data=False)
            if restored is None:
                raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint")
            state = restored[1]
        else:
            state = ckpt.restore(step, abstract, data=False)[0]
    finally:
        ckpt.close()
    return cfg, state.params


def load_init_params(path: str):
    """(ModelConfig, unboxed params) to start a run from: a training workdir (its newest checkpoint) or a converted
    checkpoint directory (`a1jax convert --from-hf`)."""
    from a1jax.rollout.cli import load_model
    if not os.path.isdir(path):
        raise FileNotFoundError(f"init_from {path!r}: no such directory (a training workdir or a converted "
                                f"checkpoint)")
    return load_model(path)


def place_init_params(path: str, cfg, values, abstract_params, shardings):
    """`values` (from `path`) checked against the experiment's (boxed) abstract params and placed with `shardings`,
    in buffers of their own (the train step donates them)."""
    import jax.numpy as jnp

    from a1jax.model import unbox
    from a1jax.model.params import box_like
    want = jax.tree.map(lambda a: (a.shape, str(a.dtype)), unbox(abstract_params))
    got = jax.tree.map(lambda a: (a.shape, str(a.dtype)), values)
    if jax.tree.structure(want) != jax.tree.structure(got) or jax.tree.leaves(want) != jax.tree.leaves(got):
        raise ValueError(f"init_from {path}: its model ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
                         f"vocab {cfg.vocab_size}, {cfg.num_experts} experts) does not match config.model")
    return jax.tree.map(jnp.copy, jax.device_put(box_like(values, abstract_params), shardings))
