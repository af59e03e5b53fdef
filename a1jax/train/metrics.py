"""Metrics out of the loop: TensorBoard scalars (tensorboardX), DIR/metrics.jsonl, and a one-line console progress."""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np

from a1jax import storage

# Peak dense bf16 FLOP/s per chip, for MFU. CPU has no datasheet figure: measured once at start-up instead.
PEAK_FLOPS = {"tpu v5p": 459e12, "tpu v5": 459e12, "tpu v6e": 918e12, "tpu v6 lite": 918e12, "tpu v5 lite": 197e12,
              "tpu v4": 275e12, "h100": 989e12, "h200": 989e12, "a100": 312e12, "b200": 2250e12}


def device_peak_flops(device=None) -> float:
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    for name, peak in PEAK_FLOPS.items():
        if name in kind:
            return peak
    return measured_cpu_flops()


def measured_cpu_flops(n: int = 512, repeats: int = 3) -> float:
    """FLOP/s of an fp32 matmul on this host, the CPU stand-in for a datasheet peak."""
    x = jax.numpy.ones((n, n), jax.numpy.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def model_flops_breakdown(cfg, seq_len: int, mtp: bool = False) -> dict[str, float]:
    """Training FLOPs per token (forward + backward, 6 per matmul parameter, no recompute), by part of the model.

    layers: the decoder layers' active matmul parameters (top-k experts); attention: causal attention,
    6·T·heads·head_dim per full-attention layer (QK^T and PV over the causal half, x3 for the backward); lm_head: the
    output projection (the input embedding is a gather, not a matmul). With `mtp` (the step trains the
    multi-token-prediction module: train.mtp_loss_coef > 0), mtp_layers: its fc and decoder layer(s) with their
    attention, and mtp_lm_head: the shared LM head's second pass, for the MTP positions."""
    from a1jax.model.params import count_params, inactive_expert_params, param_specs, spec_size
    _, active = count_params(cfg)
    H, V = cfg.hidden_size, cfg.vocab_size
    embedding_and_head = V * H * (1 if cfg.tie_word_embeddings else 2)  # count_params counts a tied matrix once
    attn_layer = 6 * cfg.num_attention_heads * cfg.head_dim * seq_len
    n_attn = sum(t == "full_attention" for t in cfg.layer_types)
    parts = {"layers": 6.0 * (active - embedding_and_head), "attention": float(n_attn * attn_layer),
             "lm_head": 6.0 * V * H}
    if mtp and cfg.mtp_num_hidden_layers > 0:
        n = spec_size(param_specs(cfg)["mtp"]) - inactive_expert_params(cfg, cfg.mtp_num_hidden_layers)
        parts["mtp_layers"] = 6.0 * n + cfg.mtp_num_hidden_layers * attn_layer
        parts["mtp_lm_head"] = 6.0 * V * H
    return parts


def model_flops_per_token(cfg, seq_len: int, mtp: bool = False) -> float:
    """Training FLOPs per token: 6 x active matmul parameters + causal attention (`model_flops_breakdown`)."""
    return sum(model_flops_breakdown(cfg, seq_len, mtp).values())


class MetricWriter:
    """Writes every scalar to TensorBoard and metrics.jsonl (process 0 only).

    Local workdir: metrics.jsonl is appended to and flushed at every call. Object storage (`gs://`) has no append
    and no partial objects, so there the lines are kept in memory (after the file's existing lines, when resuming)
    and the whole file is rewritten as one object write at most every `flush_s` seconds, at every `flush()` (the
    loop calls it before each checkpoint) and at `close()`. A kill at any moment leaves the previous complete file:
    never a torn line, and every step up to the last checkpoint is in it. TensorBoard events on object storage
    follow the same scheme (tensorboardX rewrites the event object whole at each flush)."""

    def __init__(self, workdir: str, *, enabled: bool = True, flush_s: float = 30.0):
        self.enabled = enabled and jax.process_index() == 0
        self._tb = self._jsonl = None
        self._remote = storage.is_remote(workdir)
        self._flush_s, self._flushed_at = flush_s, time.monotonic()
        if self.enabled:
            from tensorboardX import SummaryWriter
            self.logdir = os.path.join(workdir, "tensorboard")
            self._tb = SummaryWriter(self.logdir)
            self.path = os.path.join(workdir, "metrics.jsonl")
            if self._remote:
                self._lines = [storage.read_text(self.path)] if storage.exists(self.path) else []
            else:
                self._jsonl = open(self.path, "a")

    def scalars(self, step: int, scalars: dict[str, float]):
        if not self.enabled:
            return
        for k, v in scalars.items():
            self._tb.add_scalar(k, float(v), step)
        line = json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n"
        if not self._remote:
            self._jsonl.write(line)
            self._jsonl.flush()
            return
        self._lines.append(line)
        if time.monotonic() - self._flushed_at >= self._flush_s:
            self.flush()

    def histogram(self, step: int, name: str, values):
        if self.enabled:
            self._tb.add_histogram(name, np.asarray(values), step)

    def flush(self):
        """Makes every line so far durable (object storage: one whole-file object write)."""
        if not self.enabled:
            return
        self._tb.flush()
        if self._remote:
            self._lines = ["".join(self._lines)]
            storage.write_atomic(self.path, self._lines[0])
            self._flushed_at = time.monotonic()

    def close(self):
        if self.enabled:
            if self._remote:
                self.flush()
            else:
                self._jsonl.close()
            self._tb.close()


class Progress:
    """`step 120/1000  loss 2.314  tok/s 5,120  eta 3m12s` on one console line per log interval."""

    def __init__(self, total_steps: int, start_step: int):
        self.total, self.start, self.t0 = total_steps, start_step, time.time()

    def line(self, step: int, loss: float, tokens_per_s: float) -> str:
        done = max(step - self.start, 1)
        eta = (time.time() - self.t0) / done * max(self.total - step, 0)
        m, s = divmod(int(eta), 60)
        h, m = divmod(m, 60)
        eta_s = f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
        return f"step {step}/{self.total}  loss {loss:.4f}  tok/s {tokens_per_s:,.0f}  eta {eta_s}"

    def print(self, *a):
        if jax.process_index() == 0:
            print(self.line(*a), file=sys.stdout, flush=True)


def expert_load_scalars(expert_counts) -> dict[str, float]:
    """Per layer: max and mean (token, slot) count per expert, and their ratio (1.0 = perfect balance)."""
    counts = np.asarray(expert_counts)
    out = {}
    for layer, c in enumerate(counts):
        mean = float(c.mean())
        out[f"experts/layer{layer:02d}_max"] = float(c.max())
        out[f"experts/layer{layer:02d}_mean"] = mean
        out[f"experts/layer{layer:02d}_max_over_mean"] = float(c.max()) / mean if mean else 0.0
    return out


class Profiler:
    """config.profile = {start_step: S, steps: N}: a jax profiler trace of steps S+1 .. S+N (the N steps that start
    once S are done) in WORKDIR/tensorboard/plugins/profile/<run>/, where TensorBoard's profile plugin finds it
    (docs/metrics.md). Every process traces its own host. A URL workdir: the trace is written to a local temporary
    folder and uploaded when it stops (the profiler writes through the local file system)."""

    def __init__(self, workdir: str, profile=None):
        profile = profile or {}
        self.start, self.steps = int(profile.get("start_step", 0)), int(profile.get("steps", 0))
        self.logdir = os.path.join(workdir, "tensorboard")
        self._local = None  # the folder the running trace goes to; None: not tracing

    def before(self, step: int):
        """Call with the number of steps done, before the next one."""
        if self.steps and step == self.start and self._local is None:
            import tempfile
            self._local = tempfile.mkdtemp(prefix="a1jax-profile-") if storage.is_remote(self.logdir) else self.logdir
            jax.profiler.start_trace(self._local)

    def after(self, step: int, state):
        """Call with the number of steps done, after the step; stops once the N steps are done (waiting for them)."""
        if self._local is not None and step >= self.start + self.steps:
            jax.block_until_ready(state)
            self.close()

    def close(self):
        if self._local is None:
            return
        jax.profiler.stop_trace()
        local, self._local = self._local, None
        if local != self.logdir:  # upload the trace files, then drop the local copy
            import shutil
            for rel in storage.walk_files(local):
                storage.upload(os.path.join(local, rel), os.path.join(self.logdir, rel))
            shutil.rmtree(local, ignore_errors=True)
        if jax.process_index() == 0:
            print(f"profile of steps {self.start + 1}..{self.start + self.steps} written to "
                  f"{os.path.join(self.logdir, 'plugins', 'profile')}", flush=True)
