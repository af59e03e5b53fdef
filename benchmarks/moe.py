"""MoE grouped-matmul benchmark: `gmm`, `tgmm` and the whole routed-expert block (fwd+bwd), each beside
`jax.lax.ragged_dot` and a dense einsum with the same useful FLOPs, all measured in the same run.

    .venv/bin/python -m benchmarks.moe                       # from the repo root; the 35B-A3B shape on GPU/TPU
    .venv/bin/python -m benchmarks.moe --tokens-per-expert 512 --iters 20

Shape: Qwen3.5-35B-A3B routed experts (E=256, hidden 2048, expert width 512, top-8, bf16); m = routed rows per expert
(128-2048), so the block sees N = m*E/k tokens. TFLOP/s counts useful FLOPs only (no padding rows, no skipped
experts): 2*rows*K*N per grouped matmul, 3x the forward for fwd+bwd. The fraction of peak uses the card's dense bf16
peak (H100 SXM: 989 TFLOP/s). Target on H100: >= 35% of peak for the block's fwd+bwd at m=512 and >= 5x the
ragged_dot path.

On CPU Pallas only interprets, so the default shape shrinks and the figures are for the record, not for tuning.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from a1jax import hugepages
from kernels import backend, moe
from kernels.reference import moe as reference

BF16_PEAK_TFLOPS = {  # dense bf16, from vendor data sheets
    "H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0,
    "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0,
    "TPU v5p": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}
PRODUCTION = dict(experts=256, hidden=2048, inter=512, top_k=8, tokens_per_expert=[128, 256, 512, 1024, 2048])
CPU_RECORD = dict(experts=32, hidden=512, inter=128, top_k=8, tokens_per_expert=[128, 512])


def peak_tflops(device) -> float | None:
    kind = device.device_kind
    matches = [v for name, v in BF16_PEAK_TFLOPS.items() if name in kind]
    return max(matches) if matches else None


def timed(fn, *args, iters: int) -> float:
    """Median wall time in ms of the jitted fn, after one compiling call."""
    f = jax.jit(fn)
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def routing(n_tokens, E, k, seed):
    """Random router logits (the loads of a freshly initialised router: roughly balanced) and their group sizes."""
    logits = jax.random.normal(jax.random.key(seed), (n_tokens, E), jnp.float32)
    _, ids = moe.route(logits, k)
    return logits, jnp.bincount(ids.reshape(-1), length=E).astype(jnp.int32)


def cases(E, H, inter, k, m, kernel_impls, dtype, seed=0):
    """(op name, useful FLOPs, {implementation: (fn, args)}) for one tokens-per-expert value."""
    n_tokens, rows = m * E // k, m * E
    keys = jax.random.split(jax.random.key(seed), 6)
    x = jax.random.normal(keys[0], (n_tokens, H), dtype)
    x_rows = jax.random.normal(keys[1], (rows, H), dtype)
    dy = jax.random.normal(keys[2], (rows, 2 * inter), dtype)
    w_gate_up = (jax.random.normal(keys[3], (E, H, 2 * inter), jnp.float32) * H ** -0.5).astype(dtype)
    w_down = (jax.random.normal(keys[4], (E, inter, H), jnp.float32) * inter ** -0.5).astype(dtype)
    logits, sizes = routing(n_tokens, E, k, seed)
    logits = logits.astype(dtype)

    def block(impl):
        def loss(x, logits, wgu, wd):
            return jnp.sum(moe.moe_ffn(x, logits, wgu, wd, k, impl=impl).astype(jnp.float32))
        return jax.grad(loss, argnums=(0, 1, 2, 3))

    def dense_block(x, wgu, wd):  # the same useful FLOPs as one dense SwiGLU MLP over all routed rows
        def loss(x, wgu, wd):
            h = x @ wgu
            return jnp.sum(((jax.nn.silu(h[:, :inter]) * h[:, inter:]) @ wd).astype(jnp.float32))
        return jax.grad(loss, argnums=(0, 1, 2))(x, wgu, wd)

    gmm_flops = 2 * rows * H * 2 * inter
    block_flops = 3 * 2 * rows * (H * 2 * inter + inter * H)
    return [
        ("gmm", gmm_flops, {
            **{i: (lambda a, b, s, i=i: moe.gmm(a, b, s, impl=i), (x_rows, w_gate_up, sizes)) for i in kernel_impls},
            "ragged_dot": (reference.gmm, (x_rows, w_gate_up, sizes)),
            "dense": (lambda a, b: a @ b, (x_rows, w_gate_up[0]))}),
        ("tgmm", gmm_flops, {
            **{i: (lambda a, b, s, i=i: moe.tgmm(a, b, s, impl=i), (x_rows, dy, sizes)) for i in kernel_impls},
            "ragged_dot": (reference.tgmm, (x_rows, dy, sizes)),
            "dense": (lambda a, b: a.T @ b, (x_rows, dy))}),
        ("block fwd+bwd", block_flops, {
            **{i: (block(i), (x, logits, w_gate_up, w_down)) for i in kernel_impls},
            "ragged_dot": (block("xla"), (x, logits, w_gate_up, w_down)),
            "dense": (dense_block, (x_rows, w_gate_up[0], w_down[0]))}),
    ]


def main(argv=None):
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    defaults = CPU_RECORD if on_cpu else PRODUCTION
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", type=int, default=defaults["experts"])
    p.add_argument("--hidden", type=int, default=defaults["hidden"])
    p.add_argument("--inter", type=int, default=defaults["inter"])
    p.add_argument("--top-k", type=int, default=defaults["top_k"])
    p.add_argument("--tokens-per-expert", type=int, nargs="+", default=defaults["tokens_per_expert"])
    p.add_argument("--iters", type=int, default=3 if on_cpu else 20)
    p.add_argument("--kernel", nargs="+", default=None,
                   help="kernel implementations (default: the platform's; both, interpreted, on CPU)")
    a = p.parse_args(argv)
    kernel_impls = a.kernel or ([c for c in backend.candidates("moe", platform_name=device.platform) if c != "xla"]
                                or ["pallas_tpu", "pallas_gpu"])
    peak = peak_tflops(device)
    print(f"device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s); bf16 peak "
          f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown'}; jax {jax.__version__}")
    print(f"shape: E={a.experts} hidden={a.hidden} expert width={a.inter} top-{a.top_k} bf16"
          + ("  [CPU: reduced shape, Pallas interpreted; for the record only]" if on_cpu else ""))
    print(f"{'op':<14} {'m/expert':>8} {'impl':<11} {'ms':>10} {'TFLOP/s':>9} {'% peak':>7} {'x ragged_dot':>12}")
    for m in a.tokens_per_expert:
        for op, flops, impls in cases(a.experts, a.hidden, a.inter, a.top_k, m, kernel_impls, jnp.bfloat16):
            ms = {name: timed(fn, *args, iters=a.iters) for name, (fn, args) in impls.items()}
            for name, t in ms.items():
                tflops = flops / t / 1e9
                pct = f"{100 * tflops / peak:6.1f}%" if peak else "    n/a"
                print(f"{op:<14} {m:>8} {name:<11} {t:>10.3f} {tflops:>9.3f} {pct:>7} "
                      f"{ms['ragged_dot'] / t:>11.2f}x", flush=True)


if __name__ == "__main__":
    hugepages.ensure()  # as the `a1jax` command runs: large buffers on huge pages
    main()
