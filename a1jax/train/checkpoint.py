"""Checkpoints: orbax, asynchronous, atomic, keeping the last K, with fallback past a damaged one.

A checkpoint at WORKDIR/checkpoints/<step>/ holds the train state (params, optimizer state, step, rng, counters),
the data iterator state and the experiment config. Orbax writes into a temporary directory and renames it when the
write completes, so a run killed mid-save leaves the previous checkpoints intact and the partial one invisible.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("a1jax.train")


class CheckpointError(RuntimeError):
    pass


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data", "config"))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, data_state: Any, config: dict, *, force: bool = False) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
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
        self._manager.reload()

    def restore(self, step: int, abstract_state):
        """Restores one step onto the shardings of `abstract_state` (ShapeDtypeStructs with `.sharding`)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                                  config=ocp.args.JsonRestore())
        out = self._manager.restore(int(step), args=args)
        return out["state"], out["data"], out["config"]

    def restore_latest(self, abstract_state):
        """Newest checkpoint that restores cleanly; a damaged one is reported and skipped. None if there is none."""
        errors = []
        for step in reversed(self.steps()):
            try:
                state, data, config = self.restore(step, abstract_state)
                if errors:
                    log.warning("restored checkpoint %d after skipping damaged ones: %s", step, "; ".join(errors))
                return step, state, data, config
            except Exception as e:  # noqa: BLE001 - any failure to read a checkpoint means "damaged"
                path = os.path.join(self.directory, str(step))
                first_line = str(e).splitlines()[0] if str(e) else ""
                msg = f"checkpoint {path} is damaged or incompatible ({type(e).__name__}: {first_line})"
                log.error("%s; trying the previous one", msg)
                errors.append(msg)
                self._set_aside(step)
        if errors:
            raise CheckpointError(f"no checkpoint in {self.directory} could be restored:\n  " + "\n  ".join(errors))
        return None


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
            restored = ckpt.restore_latest(abstract)
            if restored is None:
                raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint")
            state = restored[1]
        else:
            state = ckpt.restore(step, abstract)[0]
    finally:
        ckpt.close()
    return cfg, state.params
