"""What the batch sources of the rollout stages share (opd.py, teacher_training.py): the run's settings, the
tokenizer, the sampler's copy of the weights, and the checkpoint's data item. The loop that runs them is the stage-1
trainer's (a1jax/train/loop.py), with its checkpoints (params, optimizer state, step, rng); the data item is
{"step": n}: a step's tasks and samples are functions of (seed, step), so nothing else is needed to resume exactly
where the run stopped.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from a1jax import model
from a1jax.data import tokenizers
from a1jax.train.loop import BatchSource, Run


class RolloutSource(BatchSource):
    """The shared part of a rollout stage's batch source: `settings` (config's loop sections), `tok`, `domains`,
    `engine` (set by the stage: it follows the student after every update), `engine_params()`, `start_params()`."""

    def __init__(self, run: Run):
        self.run, self.exp, self.settings = run, run.exp, run.exp.loop
        self.workdir, self.domains, self.init_from = run.workdir, run.domains, run.init_from
        self.built, self.writer, self.resumed = run.built, run.writer, run.resumed
        self.tok = tokenizers.load(run.exp.data.tokenizer)
        self.engine, self.t0 = None, time.perf_counter()

    def start_params(self):
        return self.run.start_params()

    def engine_params(self):
        """The sampler's copy of the current weights (one device: the in-process engine decodes on one device; at
        scale the sampler is a separate inference service that receives these weights)."""
        return jax.device_put(model.unbox(self.run.state.params), jax.devices()[0])

    def state(self) -> dict:
        return {"step": int(self.run.step)}

    def updated(self, state) -> None:
        if self.engine is not None:
            self.engine.params = self.engine_params()  # the sampler follows the student

    def timed(self, scalars: dict, batch: dict) -> dict:
        """`scalars` with perf/tokens_per_s: the step's non-padding tokens over the time since `next` began."""
        tokens = float(np.sum(batch["segment_ids"] > 0))
        return scalars | {"perf/tokens_per_s": tokens / max(time.perf_counter() - self.t0, 1e-9)}
