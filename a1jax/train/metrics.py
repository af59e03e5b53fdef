"""Metrics out of the loop: TensorBoard scalars (tensorboardX), DIR/metrics.jsonl, and a one-line console progress."""
from __future__ import annotations

import json
import os
import sys
import time

import jax
import numpy as np

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


def model_flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token: 6 x active matmul parameters (no embedding gather) + causal attention."""
    from a1jax.model.params import count_params
    _, active = count_params(cfg)
    matmul = active - cfg.vocab_size * cfg.hidden_size  # the input embedding is a gather, not a matmul
    n_attn = sum(t == "full_attention" for t in cfg.layer_types)
    attn = 6 * n_attn * cfg.num_attention_heads * cfg.head_dim * seq_len  # QK^T and PV, causal half, x3 for bwd
    return 6.0 * matmul + attn


class MetricWriter:
    """Writes every scalar to TensorBoard and metrics.jsonl (process 0 only)."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled and jax.process_index() == 0
        self._tb = self._jsonl = None
        if self.enabled:
            from tensorboardX import SummaryWriter
            self.logdir = os.path.join(workdir, "tensorboard")
            self._tb = SummaryWriter(self.logdir)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

    def scalars(self, step: int, scalars: dict[str, float]):
        if not self.enabled:
            return
        for k, v in scalars.items():
            self._tb.add_scalar(k, float(v), step)
        self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self._jsonl.flush()

    def histogram(self, step: int, name: str, values):
        if self.enabled:
            self._tb.add_histogram(name, np.asarray(values), step)

    def close(self):
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


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
