"""The training loop, readable top to bottom: set up, restore or initialise, then step, log, evaluate, checkpoint.

Everything impure lives here (I/O, logging, checkpoints, signals, device placement); the math is in steps.py.

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

from a1jax import distributed, storage
from a1jax.data import pipeline
from a1jax.train import build, checkpoint, metrics as mt, vocabulary
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


def _global_batch(batch: dict, batch_sharding, num_shards: int) -> dict:
    """This process's [B / num_shards, ...] numpy rows -> one global [B, ...] jax.Array per field. The global shape
    is explicit: processes that share a row block (`distributed.data_shard`) hold the same rows, and jax's inferred
    shape would count them twice."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v),
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
        out = jax.device_get(eval_fn(params, _global_batch(batch, batch_sharding, shard[1])))
        nll += float(out["nll_sum"])
        dom_nll, dom_tok = dom_nll + out["domain_nll_sum"], dom_tok + out["domain_tokens"]
        n += 1
    tokens = float(np.sum(dom_tok))
    result = {"eval/loss": nll / max(tokens, 1.0), "eval/supervised_tokens": tokens}
    for name, i in domains.items():
        if i < len(dom_tok) and dom_tok[i] > 0:
            result[f"eval/loss_{name}"] = float(dom_nll[i] / dom_tok[i])
    return result


def train(exp: Experiment, workdir: str, *, init_from: str = "", devices=None,
          allow_fresh_start: bool = False) -> TrainState:
    """Trains `exp` in `workdir`, resuming from its newest checkpoint. `devices`: a subset of jax.devices() for the
    mesh (default: all of them). `allow_fresh_start`: start from step 0 even though damaged checkpoints were set
    aside in `workdir` (otherwise that is an error)."""
    config, cfg = exp.config, exp.model
    init_from = init_from or config.get("init_from", "")  # --init_from, else the experiment's own
    storage.makedirs(workdir)  # a URL: checked writable now, one clear error instead of a hang later
    _check_same_model(workdir, config)
    vocabulary.guard(workdir, init_from, exp.data.tokenizer)
    if jax.process_index() == 0:
        checkpoint.save_json(os.path.join(workdir, "config.json"), config.to_dict())

    # --- mesh, optimizer, step, this process's data ---------------------------------------------------------------
    domains = pipeline.domain_table(exp.data)
    built = build.build(exp, num_domains=len(domains), devices=devices)
    tx, state_sh, batch_sh = built.tx, built.state_shardings, built.batch_sharding
    it, shard = _data_iterator(exp.data, batch_sh)
    abstract = built.abstract_state
    rng = jax.random.key(config.seed)

    # --- restore, or start from a converted checkpoint, or initialise -------------------------------------------
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
                                   async_save=config.checkpoint.async_save)
    try:
        restored = ckpt.restore_latest(checkpoint.abstract_with_shardings(abstract, state_sh),
                                       allow_fresh_start=allow_fresh_start)
    except Exception:
        ckpt.close()
        raise
    last_saved = None
    if restored is not None:
        step0, state, data_state, _ = restored
        _restore_data_state(it, data_state, shard, os.path.join(ckpt.directory, str(step0)))
        last_saved = step0
        log.info("resumed from %s at step %d", ckpt.directory, step0)
    else:
        state = built.init_state(rng)
        if init_from:
            params = checkpoint.place_init_params(init_from, *checkpoint.load_init_params(init_from), abstract.params,
                                                  state_sh.params)
            state = with_new_params(state, params, tx, state_sh)
            log.info("initialised params from %s", init_from)

    step_fn, eval_fn = built.step_fn, built.eval_fn

    # --- loop ----------------------------------------------------------------------------------------------------
    writer = mt.MetricWriter(workdir)
    profiler = mt.Profiler(workdir, config.get("profile"))
    skipped = collections.Counter()
    for source_caches in pipeline.load_sources(exp.data)[0]:  # cached: no re-tokenization
        for cache in source_caches:
            skipped.update(cache.skips.counts)
    writer.scalars(step0 if restored is not None else 0,
                   {f"data/skipped_records_{reason}": float(n) for reason, n in skipped.items()}
                   | {"data/skipped_records": float(sum(skipped.values()))})
    total = int(config.train.steps)
    step = int(jax.device_get(state.step))
    progress = mt.Progress(total, step)
    flops_per_token = mt.model_flops_per_token(cfg, exp.data.seq_len, mtp=built.ctx.trains_mtp)
    peak = mt.device_peak_flops() * jax.device_count()
    stop = distributed.StopSignal()  # SIGTERM: every process stops at the same step
    sigterm = False
    # Processes read disjoint records, so with finite epochs they can run out a batch apart: agree every step.
    agree_on_data = jax.process_count() > 1 and exp.data.num_epochs is not None
    data_state = {"shard": list(shard), "iterator": it.get_state()}  # before the batch in hand: what a resume reads
    pending, t_window = [], time.perf_counter()
    unchecked, skips_limit = None, int(config.train.max_consecutive_skips)
    try:
        while step < total and not (sigterm := stop.requested(step)):
            batch = next(it, None)
            if distributed.any_process(batch is None) if agree_on_data else batch is None:
                _say(f"data exhausted after {step} steps (data.num_epochs={exp.data.num_epochs}, "
                     f"overlong handling: {dict(getattr(it, 'counts', {}))})")
                break
            data_state = {"shard": list(shard), "iterator": it.get_state()}
            profiler.before(step)
            state, m = step_fn(state, _global_batch(batch, batch_sh, shard[1]))
            step += 1
            profiler.after(step, state)
            if unchecked is not None:  # the previous step's guard counter: done by now, so no wait on this step
                check_skips(*unchecked, skips_limit, ckpt.directory)
            unchecked = (m["skipped_consecutive"], step)
            pending.append(m)
            if step % config.train.log_every == 0 or step == total:
                fetched = jax.device_get(pending)
                pending = []
                elapsed = time.perf_counter() - t_window
                tokens = sum(float(f["tokens"]) for f in fetched)
                tok_s = tokens / max(elapsed, 1e-9)
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
                    "train/skipped_updates": float(jax.device_get(state.skipped_total)),
                    "perf/tokens_per_s": tok_s, "perf/tokens_per_s_per_device": tok_s / jax.device_count(),
                    "perf/mfu": tok_s * flops_per_token / peak,
                }
                if "mtp_loss" in last:
                    scalars["train/mtp_loss"] = float(last["mtp_loss"])
                dom_nll = sum(np.asarray(f["domain_nll_sum"]) for f in fetched)  # over the logging window
                dom_tok = sum(np.asarray(f["domain_tokens"]) for f in fetched)
                for name, i in domains.items():
                    if dom_tok[i] > 0:
                        scalars[f"train/loss_{name}"] = float(dom_nll[i] / dom_tok[i])
                for reason, count in getattr(it, "counts", {}).items():
                    scalars[f"data/{reason}"] = float(count)
                if "expert_counts" in last:
                    scalars.update(mt.expert_load_scalars(last["expert_counts"]))
                    writer.histogram(step, "experts/load", np.asarray(last["expert_counts"]).ravel())
                if "ep_padding_fraction" in last:  # expert parallel: share of all-to-all rows that were padding
                    scalars["experts/all_to_all_padding"] = float(last["ep_padding_fraction"])
                writer.scalars(step, scalars)
                progress.print(step, scalars["train/loss"], tok_s)
                t_window = time.perf_counter()
            if exp.eval_data is not None and config.eval.every and step % config.eval.every == 0:
                writer.scalars(step, evaluate(eval_fn, state.params, exp, batch_sh, config.eval.batches, domains))
            if step % config.checkpoint.every == 0:
                writer.flush()  # every step a checkpoint covers has its metrics line
                ckpt.save(step, state, data_state, config.to_dict())
                last_saved = step
        if unchecked is not None:
            check_skips(*unchecked, skips_limit, ckpt.directory)
        if sigterm:
            log.warning("SIGTERM: saving a checkpoint at step %d and exiting", step)
        if step != last_saved:
            ckpt.save(step, state, data_state, config.to_dict(), force=True)
        ckpt.wait()
    finally:
        stop.close()
        profiler.close()
        ckpt.close()
        writer.close()
    return state
