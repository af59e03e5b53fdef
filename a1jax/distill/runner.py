"""Set-up shared by the rollout-stage loops (opd.py, teacher_training.py): mesh and jitted step, restore or initialise,
checkpoints, metrics, and the sampler's copy of the weights. The loops themselves stay readable top to bottom.

Checkpoints are the stage-1 trainer's (a1jax.train.checkpoint.Checkpointer: params, optimizer state, step, rng); the
"data" item is {"step": n}: a step's tasks and samples are functions of (seed, step), so nothing else is needed to
resume exactly where the run stopped.
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from a1jax import distributed, model, storage
from a1jax.data import tokenizers
from a1jax.train import build, checkpoint, metrics as mt, steps, vocabulary
from a1jax.train.checkpoint import load_init_params
from a1jax.train.experiment import Experiment
from a1jax.train.state import with_new_params

log = logging.getLogger("a1jax.distill")


class StageRun:
    """One rollout-stage run in `workdir`: `state`, `step`, `step_fn(state, *arrays)`, `engine_params()`,
    `save(step)`, `close()`; `writer` (TensorBoard + metrics.jsonl) and `progress` (the console line).
    `keep_going(total, boundary)` is the loop condition: it also stops at SIGTERM (preemption), as the stage-1
    trainer does, and `finish` then saves a checkpoint at the step reached."""

    def __init__(self, exp: Experiment, workdir: str, *, init_from: str = "", devices=None,
                 allow_fresh_start: bool = False):
        from a1jax.train.loop import _check_same_model
        self.exp, self.workdir, self.settings = exp, workdir, exp.loop
        config = exp.config
        storage.makedirs(workdir)
        _check_same_model(workdir, config)
        vocabulary.guard(workdir, init_from or self.settings.init_from, exp.data.tokenizer)
        if jax.process_index() == 0:
            checkpoint.save_json(os.path.join(workdir, "config.json"), config.to_dict())
        self.domains = {d: i for i, d in enumerate(self.settings.envs.domains)}
        self.init_from = init_from or self.settings.init_from  # where the student started (also on resume)
        self.built = build.build(exp, num_domains=len(self.domains), devices=devices)
        self.tok = tokenizers.load(exp.data.tokenizer)
        self.ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                                            async_save=config.checkpoint.async_save)
        abstract = checkpoint.abstract_with_shardings(self.built.abstract_state, self.built.state_shardings)
        try:
            restored = self.ckpt.restore_latest(abstract, allow_fresh_start=allow_fresh_start)
        except Exception:
            self.ckpt.close()
            raise
        if restored is not None:
            self.step, self.state, _, _ = restored
            self.resumed = True
            log.info("resumed from %s at step %d", self.ckpt.directory, self.step)
        else:
            self.resumed = False
            self.state = self.built.init_state(jax.random.key(config.seed))
            if self.init_from:
                log.info("initialised params from %s", self.init_from)
                self.state = with_new_params(self.state, self.start_params(), self.built.tx,
                                             self.built.state_shardings)
            self.step = 0
        self.last_saved = self.step if restored is not None else None
        self.writer = mt.MetricWriter(workdir)
        self.progress = mt.Progress(int(config.train.steps), self.step)
        self._jitted = {}
        self.sigterm = False
        self._stop = distributed.StopSignal()  # SIGTERM: every process stops at the same step

    def keep_going(self, total: int, boundary: int = 1) -> bool:
        """The loop condition: steps remain and no SIGTERM arrived. SIGTERM is honoured only at steps that are
        multiples of `boundary` (the loop's rollout interval), where a resumed run rebuilds exactly the state an
        uninterrupted one has (a rollout batch reused for several updates is not in the checkpoint)."""
        if self.step >= total:
            return False
        if self.step % boundary == 0 and self._stop.requested(self.step):
            self.sigterm = True
            return False
        return True

    def start_params(self):
        """The parameters the student started from (`init_from`), boxed and placed like the state's."""
        cfg, values = load_init_params(self.init_from)
        return checkpoint.place_init_params(self.init_from, cfg, values, self.built.abstract_state.params,
                                            self.built.state_shardings.params)

    def _sharding(self, x):
        spec = self.built.batch_sharding.spec
        return NamedSharding(self.built.mesh, P(*spec[:np.ndim(x)]) if np.ndim(x) < len(spec) else
                             P(*spec, *([None] * (np.ndim(x) - len(spec)))))

    def step_fn(self, state, *arrays):
        """The stage's jitted step on numpy dicts (batch [, teacher targets]); [B] and [B, T, K] arrays get the
        batch sharding on their leading axes. Compiled once per set of keys and shapes."""
        key = tuple(tuple(sorted((k, np.shape(v)) for k, v in a.items())) for a in arrays)
        if key not in self._jitted:
            fn = functools.partial(steps.get_step(self.exp.config.stage), self.built.ctx)
            shardings = tuple({k: self._sharding(v) for k, v in a.items()} for a in arrays)
            self._jitted[key] = jax.jit(fn, in_shardings=(self.built.state_shardings, *shardings),
                                        out_shardings=(self.built.state_shardings, None), donate_argnums=0)
        placed = [{k: jax.device_put(np.asarray(v), self._sharding(v)) for k, v in a.items()} for a in arrays]
        return self._jitted[key](state, *placed)

    def engine_params(self):
        """The sampler's copy of the current weights (one device: the in-process engine decodes on one device; at
        scale the sampler is a separate inference service that receives these weights)."""
        return jax.device_put(model.unbox(self.state.params), jax.devices()[0])

    def save(self, step: int, *, force: bool = False):
        self.writer.flush()  # every step a checkpoint covers has its metrics line
        if self.ckpt.save(step, self.state, {"step": int(step)}, self.exp.config.to_dict(), force=force):
            self.last_saved = step

    def check_skips(self):
        """Stops the run (TrainingStopped, one line) once train.max_consecutive_skips updates in a row were skipped
        by the guard; call after every step."""
        from a1jax.train.loop import check_skips
        check_skips(self.state.skipped_consecutive, self.step, int(self.exp.config.train.max_consecutive_skips),
                    self.ckpt.directory)

    def save_if_due(self):
        """Saves at every `config.checkpoint.every` steps (call once per finished step)."""
        if self.step % self.exp.config.checkpoint.every == 0:
            self.save(self.step)

    def after_step(self):
        """Once per finished step: the NaN guard's stop (`check_skips`), then the checkpoint if one is due."""
        self.check_skips()
        self.save_if_due()

    def finish(self, step: int):
        if self.sigterm:
            log.warning("SIGTERM: saving a checkpoint at step %d and exiting", step)
        if step != self.last_saved:
            self.save(step, force=True)
        self.ckpt.wait()

    def close(self):
        self._stop.close()
        self.ckpt.close()
        self.writer.close()
