"""The training loop of every stage, readable top to bottom: set up, restore or initialise, then step, log, evaluate,
checkpoint. A stage (the table in a1jax/stages.py) supplies its pure step (steps.py, a1jax/distill/steps.py) and a
`BatchSource`: the data pipeline for SFT (`PipelineSource`), rollouts verified, scored and packed for the rollout
stages (a1jax/distill/). Everything impure lives here and in the sources.

Multi-process runs (`a1jax.distributed`): every process runs this same loop. Each loads only the rows of the global
batch its devices hold (`distributed.data_shard`), and the rows become one global array; process 0 alone prints and
writes config.json, metrics.jsonl and TensorBoard; every process saves its own data iterator state in each checkpoint;
SIGTERM on any process stops all of them at the same step, after a checkpoint.
"""
from __future__ import annotations

import collections
import logging
import os
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from a1jax import distributed, storage
from a1jax.data import pipeline
from a1jax.train import build, checkpoint, metrics as mt, vocabulary
from a1jax.train.checkpoint import load_init_params
from a1jax.train.experiment import Experiment
from a1jax.train.state import TrainState, with_new_params

log = logging.getLogger("a1jax.train")


class TrainingStopped(RuntimeError):
    """Raised when the NaN/Inf guard skipped too many consecutive updates (the CLI prints it as one line)."""


def check_skips(consecutive, step: int, limit: int, checkpoints: str) -> None:
    """Raises TrainingStopped once `limit` updates in a row were skipped by the guard. `consecutive`: the state's
    skipped_consecutive after `step` (a device scalar). Called for every step, so the run stops at the limit-th skip,
    not at the next logging step."""
    consecutive = int(jax.device_get(consecutive))
    if consecutive >= limit:
        raise TrainingStopped(
            f"stopping at step {step}: the last {consecutive} updates were skipped (non-finite loss, gradient or "
            f"update; train.max_consecutive_skips={limit}); lower optimizer.learning_rate or check the data of "
            f"these steps, then rerun to resume from the last good checkpoint in {checkpoints}")


def _global_batch(batch: dict, sharding_of, num_shards: int) -> dict:
    """This process's [B / num_shards, ...] numpy rows -> one global [B, ...] jax.Array per field, laid out by
    `sharding_of(array)`. The global shape is explicit: processes that share a row block (`distributed.data_shard`)
    hold the same rows, and jax's inferred shape would count them twice."""
    return {k: jax.make_array_from_process_local_data(sharding_of(v), np.asarray(v),
                                                      (np.shape(v)[0] * num_shards, *np.shape(v)[1:]))
            for k, v in batch.items()}


def _data_iterator(config: pipeline.PipelineConfig, batch_sharding):
    """The iterator of this process's rows, and its (shard index, shard count)."""
    shard = distributed.data_shard(batch_sharding, (config.batch_size, config.seq_len))
    return pipeline.make_iterator(config, process_index=shard[0], process_count=shard[1]), shard


def _restore_data_state(it, saved: dict, shard: tuple[int, int], path: str):
    """Puts the iterator where the checkpoint left it; the row split must be the one it was saved with."""
    saved_shard, state = (tuple(saved["shard"]), saved["iterator"]) if "iterator" in saved else ((0, 1), saved)
    if saved_shard[1] != shard[1]:
        raise ValueError(f"{path}: its data iterator states are for the batch split over {saved_shard[1]} row "
                         f"blocks, this mesh splits it over {shard[1]}; resume on a mesh whose batch axes span the "
                         f"same number of processes")
    it.set_state(state)


def _say(msg: str):
    if jax.process_index() == 0:
        print(msg, flush=True)


def _check_same_model(workdir: str, config):
    """Resuming needs the model the checkpoints were written with; say which fields differ instead of failing
    inside the restore."""
    path = os.path.join(workdir, "config.json")
    if not (storage.exists(path) and storage.isdir(os.path.join(workdir, "checkpoints"))):
        return
    old = storage.read_json(path).get("model", {})
    new = config.to_dict().get("model", {})
    flat = lambda d, pre="": ({k2: v2 for k, v in d.items() for k2, v2 in flat(v, f"{pre}{k}.").items()}
                              if isinstance(d, dict) else {pre[:-1]: d})
    a, b = flat(old), flat(new)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        details = ", ".join(f"model.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff)
        raise ValueError(f"--workdir {workdir} holds checkpoints of a different model ({details}); "
                         f"use a new --workdir or the original config")


def evaluate(eval_fn, params, exp: Experiment, batch_sharding, max_batches: int, domains: dict) -> dict:
    it, shard = _data_iterator(exp.eval_data, batch_sharding)
    multi = jax.process_count() > 1
    nll, dom_nll, dom_tok, n = 0.0, 0.0, 0.0, 0
    while n < max_batches:
        batch = next(it, None)
        if (distributed.any_process(batch is None) if multi else batch is None):  # processes stop together
            break
        out = jax.device_get(eval_fn(params, _global_batch(batch, lambda _: batch_sharding, shard[1])))
        nll += float(out["nll_sum"])
        dom_nll, dom_tok = dom_nll + out["domain_nll_sum"], dom_tok + out["domain_tokens"]
        n += 1
    tokens = float(np.sum(dom_tok))
    result = {"eval/loss": nll / max(tokens, 1.0), "eval/supervised_tokens": tokens}
    for name, i in domains.items():
        if i < len(dom_tok) and dom_tok[i] > 0:
            result[f"eval/loss_{name}"] = float(dom_nll[i] / dom_tok[i])
    return result


class BatchSource:
    """What a stage feeds the loop, made by its table entry's `source(run)` once the run is restored or initialised;
    subclasses define `next`, `state` and `record`, and may override the rest.

    `next(step)` -> the step's inputs after the state (a tuple of numpy dicts of this process's rows: the batch [, the
    teacher targets]), or None when the data is exhausted; `state()` -> the checkpoint's data item (what a resume
    needs to hand out the batches that follow the last one handed out; read back as `run.data_state`);
    `updated(state)` -> the hook after every update (the rollout sources hand the new weights to their sampling
    engine); `record(step, metrics)` -> the step's scalars to write, or None; `note(scalars)` -> an extra console line
    at logging steps. `boundary`: SIGTERM stops the run only at steps that are multiples of it (where a resumed run
    rebuilds exactly the state an uninterrupted one has); `shard`: (row block, row blocks) of this process's rows."""
    boundary = 1
    shard = (0, 1)

    def updated(self, state) -> None:
        pass

    def note(self, scalars: dict) -> str:
        return ""


class Run:
    """One run of `exp` in `workdir`, set up and restored (or initialised): `state`, `step`, `data_state` (the restored
    checkpoint's data item, or None), `resumed`, `domains` ({name: id}), `built`, `writer`, `history` (the scalars
    written, one dict per step), `step_fn(state, *inputs)`, `start_params()`, `save(step, data_state)`, `close()`."""

    def __init__(self, exp: Experiment, workdir: str, *, init_from: str = "", devices=None,
                 allow_fresh_start: bool = False):
        config, self.exp, self.workdir = exp.config, exp, workdir
        self.init_from = init_from or config.get("init_from", "")  # --init_from, else the experiment's own
        storage.makedirs(workdir)  # a URL: checked writable now, one clear error instead of a hang later
        _check_same_model(workdir, config)
        vocabulary.guard(workdir, self.init_from, exp.data.tokenizer)
        if jax.process_index() == 0:
            checkpoint.save_json(os.path.join(workdir, "config.json"), config.to_dict())
        self.domains = exp.stage.domains(exp)
        self.built = build.build(exp, num_domains=len(self.domains), devices=devices)
        self.ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                                            async_save=config.checkpoint.async_save)
        abstract = checkpoint.abstract_with_shardings(self.built.abstract_state, self.built.state_shardings)
        try:
            restored = self.ckpt.restore_latest(abstract, allow_fresh_start=allow_fresh_start)
        except Exception:
            self.ckpt.close()
            raise
        self.resumed = restored is not None
        if restored is not None:
            step, self.state, self.data_state, _ = restored
            log.info("resumed from %s at step %d", self.ckpt.directory, step)
        else:
            self.state, self.data_state = self.built.init_state(jax.random.key(config.seed)), None
            if self.init_from:
                self.state = with_new_params(self.state, self.start_params(), self.built.tx,
                                             self.built.state_shardings)
                log.info("initialised params from %s", self.init_from)
        self.step = int(jax.device_get(self.state.step))
        self.last_saved = self.step if self.resumed else None
        self.writer = mt.MetricWriter(workdir)
        self.history: list[dict] = []
        self.shard = (0, 1)
        self._jitted = {}

    def start_params(self):
        """The parameters the run started from (`init_from`), boxed and placed like the state's."""
        cfg, values = load_init_params(self.init_from)
        return checkpoint.place_init_params(self.init_from, cfg, values, self.built.abstract_state.params,
                                            self.built.state_shardings.params)

    def _sharding(self, x):
        spec = self.built.batch_sharding.spec  # [B, T]; [B] and [B, T, K] arrays: the same on their leading axes
        return NamedSharding(self.built.mesh, P(*spec[:np.ndim(x)]) if np.ndim(x) < len(spec) else
                             P(*spec, *([None] * (np.ndim(x) - len(spec)))))

    def step_fn(self, state, *inputs):
        """The stage's jitted step (`Built.jit_step`: state donated) on numpy dicts of this process's rows (`shard`),
        which become global arrays, each field laid out by its rank. Compiled once per set of keys and shapes."""
        key = tuple(tuple(sorted((k, np.shape(v)) for k, v in a.items())) for a in inputs)
        if key not in self._jitted:
            shardings = tuple({k: self._sharding(v) for k, v in a.items()} for a in inputs)
            self._jitted[key] = self.built.jit_step(shardings)
        return self._jitted[key](state, *(_global_batch(a, self._sharding, self.shard[1]) for a in inputs))

    def save(self, step: int, data_state: dict, *, force: bool = False):
        self.writer.flush()  # every step a checkpoint covers has its metrics line
        if self.ckpt.save(step, self.state, data_state, self.exp.config.to_dict(), force=force):
            self.last_saved = step

    def close(self):
        self.ckpt.close()
        self.writer.close()


class PipelineSource(BatchSource):
    """Stage 1's batches: this process's rows of the data pipeline (a1jax/data/pipeline.py); the checkpoint's data
    item is the iterator state after the last batch handed out. Logs the token-weighted loss of each logging window."""

    def __init__(self, run: Run):
        exp, self.run = run.exp, run
        self.it, self.shard = _data_iterator(exp.data, run.built.batch_sharding)
        if run.data_state is not None:
            _restore_data_state(self.it, run.data_state, self.shard,
                                os.path.join(run.ckpt.directory, str(run.step)))
        skipped = collections.Counter()
        for source_caches in pipeline.load_sources(exp.data)[0]:  # cached: no re-tokenization
            for cache in source_caches:
                skipped.update(cache.skips.counts)
        run.writer.scalars(run.step, {f"data/skipped_records_{reason}": float(n) for reason, n in skipped.items()}
                           | {"data/skipped_records": float(sum(skipped.values()))})
        # Processes read disjoint records, so with finite epochs they can run out a batch apart: agree every step.
        self.agree_on_data = jax.process_count() > 1 and exp.data.num_epochs is not None
        self.data_state = {"shard": list(self.shard), "iterator": self.it.get_state()}
        self.flops_per_token = mt.model_flops_per_token(exp.model, exp.data.seq_len, mtp=run.built.ctx.trains_mtp)
        self.peak = mt.device_peak_flops() * jax.device_count()
        self.pending, self.t_window = [], time.perf_counter()

    def next(self, step: int):
        batch = next(self.it, None)
        if distributed.any_process(batch is None) if self.agree_on_data else batch is None:
            _say(f"data exhausted after {step} steps (data.num_epochs={self.run.exp.data.num_epochs}, "
                 f"overlong handling: {dict(getattr(self.it, 'counts', {}))})")
            return None
        self.data_state = {"shard": list(self.shard), "iterator": self.it.get_state()}
        return (batch,)

    def state(self) -> dict:
        return self.data_state

    def record(self, step: int, metrics: dict) -> dict | None:
        config = self.run.exp.config
        self.pending.append(metrics)
        if not (step % config.train.log_every == 0 or step == int(config.train.steps)):
            return None
        fetched = jax.device_get(self.pending)
        self.pending = []
        elapsed = time.perf_counter() - self.t_window
        self.t_window = time.perf_counter()
        tok_s = sum(float(f["tokens"]) for f in fetched) / max(elapsed, 1e-9)
        last = fetched[-1]
        window_nll = sum(float(f["nll_sum"]) for f in fetched)
        window_sup = sum(float(f["supervised_tokens"]) for f in fetched)
        scalars = {
            # loss: token-weighted mean over the logging window; the others are the window's last step
            "train/loss": window_nll / max(window_sup, 1.0), "train/last_step_loss": float(last["loss"]),
            "train/total_loss": float(last["total_loss"]),
            "train/aux_loss": float(last["aux_loss"]), "train/router_z_loss": float(last["router_z_loss"]),
            "train/grad_norm": float(last["grad_norm"]), "train/learning_rate": float(last["learning_rate"]),
            "train/supervised_tokens": window_sup / len(fetched),
            "train/skipped_updates": float(jax.device_get(self.run.state.skipped_total)),
            "perf/tokens_per_s": tok_s, "perf/tokens_per_s_per_device": tok_s / jax.device_count(),
            "perf/mfu": tok_s * self.flops_per_token / self.peak,
        }
        if "mtp_loss" in last:
            scalars["train/mtp_loss"] = float(last["mtp_loss"])
        dom_nll = sum(np.asarray(f["domain_nll_sum"]) for f in fetched)  # over the logging window
        dom_tok = sum(np.asarray(f["domain_tokens"]) for f in fetched)
        for name, i in self.run.domains.items():
            if dom_tok[i] > 0:
                scalars[f"train/loss_{name}"] = float(dom_nll[i] / dom_tok[i])
        for reason, count in getattr(self.it, "counts", {}).items():
            scalars[f"data/{reason}"] = float(count)
        if "expert_counts" in last:
            scalars.update(mt.expert_load_scalars(last["expert_counts"]))
            self.run.writer.histogram(step, "experts/load", np.asarray(last["expert_counts"]).ravel())
        if "ep_padding_fraction" in last:  # expert parallel: share of all-to-all rows that were padding
            scalars["experts/all_to_all_padding"] = float(last["ep_padding_fraction"])
        return scalars


def run_stage(exp: Experiment, workdir: str, *, init_from: str = "", devices=None, allow_fresh_start: bool = False,
              source=None) -> Run:
    """Runs `exp` in `workdir` until config.train.steps, resuming from its newest checkpoint; returns the finished
    run. `devices`: a subset of jax.devices() for the mesh (default: all of them). `allow_fresh_start`: start from
    step 0 even though damaged checkpoints were set aside in `workdir` (otherwise that is an error). `source`:
    source(run) -> BatchSource instead of the stage's own (tests: in-memory teachers)."""
    config = exp.config
    run = Run(exp, workdir, init_from=init_from, devices=devices, allow_fresh_start=allow_fresh_start)
    profiler = mt.Profiler(workdir, config.get("profile"))
    stop = distributed.StopSignal()  # SIGTERM: every process stops at the same step
    try:
        src = (source or exp.stage.source)(run)
        run.shard = src.shard
        total, step = int(config.train.steps), run.step
        progress = mt.Progress(total, step)
        sigterm, unchecked, skips_limit = False, None, int(config.train.max_consecutive_skips)
        while step < total:
            if step % src.boundary == 0 and stop.requested(step):
                sigterm = True
                break
            inputs = src.next(step)
            if inputs is None:
                break
            profiler.before(step)
            run.state, m = run.step_fn(run.state, *inputs)
            step = run.step = step + 1
            profiler.after(step, run.state)
            src.updated(run.state)
            if unchecked is not None:  # the previous step's guard counter: done by now, so no wait on this step
                check_skips(*unchecked, skips_limit, run.ckpt.directory)
            unchecked = (m["skipped_consecutive"], step)
            scalars = src.record(step, m)
            if scalars is not None:
                run.writer.scalars(step, scalars)
                run.history.append({"step": step, **scalars})
            if step % config.train.log_every == 0 or step == total:
                progress.print(step, scalars["train/loss"], scalars["perf/tokens_per_s"])
                if note := src.note(scalars):
                    _say(f"    {note}")
            if exp.eval_data is not None and config.eval.every and step % config.eval.every == 0:
                run.writer.scalars(step, evaluate(run.built.eval_fn, run.state.params, exp, run.built.batch_sharding,
                                                  config.eval.batches, run.domains))
            if step % config.checkpoint.every == 0:
                run.save(step, src.state())
        if unchecked is not None:
            check_skips(*unchecked, skips_limit, run.ckpt.directory)
        if sigterm:
            log.warning("SIGTERM: saving a checkpoint at step %d and exiting", step)
        if step != run.last_saved:
            run.save(step, src.state(), force=True)
        run.ckpt.wait()
    finally:
        stop.close()
        profiler.close()
        run.close()
    return run


def train(exp: Experiment, workdir: str, *, init_from: str = "", devices=None,
          allow_fresh_start: bool = False) -> TrainState:
    """`run_stage` for the final state."""
    return run_stage(exp, workdir, init_from=init_from, devices=devices, allow_fresh_start=allow_fresh_start).state
