"""Sequence-kernel benchmark: flash/ring attention and chunked/context-parallel Gated DeltaNet against their baselines.

A script, not a test. For each sequence length it prints forward and backward time, TFLOP/s and tokens/s of our kernel
beside the baseline measured in the same run:
  * attention: `jax.nn.dot_product_attention` (implementation="cudnn" on GPU, XLA elsewhere), causal, GQA;
  * DeltaNet: the pure-jnp chunked rule (kernels/reference/gated_delta_rule.py);
then the ring / context-parallel overhead over all local devices against the single-device kernel.

    python benchmarks/sequence.py                      # on a GPU/TPU: 4K..128K tokens per device, production heads
    python benchmarks/sequence.py --quick              # CPU smoke run (interpreted Pallas: the numbers mean nothing)

FLOP conventions: attention forward 4*T^2*nh*D (halved when causal), backward 2.5x forward; DeltaNet forward counts
the chunked algorithm's matmuls without the triangular inverse, 2*C*(3*dk + 2*dv) + 6*dk*dv per token and head,
backward 2x forward. Both implementations are charged the same nominal FLOPs, so the TFLOP/s ratio is the speed ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
if "--quick" in sys.argv and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from a1jax import hugepages  # noqa: E402
from kernels import backend  # noqa: E402
from kernels.attention import flash_attention, load_balance, ring_attention  # noqa: E402
from kernels.gdn import chunk_gated_delta_rule, context_parallel_gated_delta_rule  # noqa: E402
from kernels.reference import gdn as gdn_ref  # noqa: E402

AXIS = "sequence"


def timeit(f, *args, reps: int):
    """Median wall time in seconds of a jitted call, after one compile-and-warm-up call."""
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def fwd_and_step(fn, args):
    """(forward, forward+backward) jitted callables for fn(*args) -> array or tuple; random-free cotangent = 1."""
    loss = lambda *a: sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(fn(*a)))
    return jax.jit(fn), jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))


def measure(fn, args, reps):
    fwd, step = fwd_and_step(fn, args)
    t_fwd = timeit(fwd, *args, reps=reps)
    t_step = timeit(step, *args, reps=reps)
    return t_fwd, (t_step - t_fwd if t_step > t_fwd else float("nan"))  # nan: below timing noise


def row(T, B, flops_fwd, ours, base):
    """One line: fwd and bwd of ours and of the baseline, with TFLOP/s, tokens/s and our speed-up."""
    cells = []
    for name, (tf, tb) in (("ours", ours), ("base", base)):
        cells += [f"{tf * 1e3:9.2f}", f"{flops_fwd / tf / 1e12:7.1f}", f"{B * T / tf:10.3g}",
                  f"{tb * 1e3:9.2f}", f"{flops_fwd * BWD_FACTOR[0] / tb / 1e12:7.1f}"]
    ratio = f"{base[0] / ours[0]:5.2f}x {base[1] / ours[1]:5.2f}x"
    return f"{T:>7} | " + " ".join(cells[:5]) + " | " + " ".join(cells[5:]) + " | " + ratio


BWD_FACTOR = [2.5]
HEADER = ("      T |  fwd ms  TF/s   tok/s     bwd ms  TF/s (ours) |  fwd ms  TF/s   tok/s     bwd ms  TF/s "
          "(baseline) | speed-up fwd bwd")


def attention_inputs(B, T, nh, nkv, D, dtype, key):
    ks = jax.random.split(key, 3)
    return (jax.random.normal(ks[0], (B, T, nh, D), dtype), jax.random.normal(ks[1], (B, T, nkv, D), dtype),
            jax.random.normal(ks[2], (B, T, nkv, D), dtype))


def gdn_inputs(B, T, Hk, H, dk, dv, key):
    ks = jax.random.split(key, 5)
    l2 = lambda x: x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-6)
    return (l2(jax.random.normal(ks[0], (B, T, Hk, dk))) * dk ** -0.5, l2(jax.random.normal(ks[1], (B, T, Hk, dk))),
            jax.random.normal(ks[2], (B, T, H, dv)), -0.1 * jax.nn.softplus(jax.random.normal(ks[3], (B, T, H))),
            jax.nn.sigmoid(jax.random.normal(ks[4], (B, T, H))))


def bench_attention(a, impl, key):
    print(f"\n== attention: causal, {a.heads} heads, head_dim {a.head_dim}, {a.dtype}, impl={impl}; "
          f"baseline jax.nn.dot_product_attention({a.baseline_impl or 'default'})")
    print(HEADER)
    BWD_FACTOR[0] = 2.5
    nh, nkv = (int(x) for x in a.heads.split(":"))
    for T in a.lengths:
        args = attention_inputs(a.batch, T, nh, nkv, a.head_dim, jnp.dtype(a.dtype), key)
        flops = 4 * a.batch * T * T * nh * a.head_dim / 2
        ours = measure(lambda q, k, v: flash_attention(q, k, v, impl=impl), args, a.reps)
        base = measure(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                                    implementation=a.baseline_impl), args, a.reps)
        print(row(T, a.batch, flops, ours, base), flush=True)


def bench_gdn(a, impl, key):
    print(f"\n== DeltaNet: {a.gdn_heads} qk:v heads, dk=dv={a.gdn_dim}, chunk {a.chunk}, fp32 rule, impl={impl}; "
          "baseline: pure-jnp chunked")
    print(HEADER)
    BWD_FACTOR[0] = 2.0
    Hk, H = (int(x) for x in a.gdn_heads.split(":"))
    d, C = a.gdn_dim, a.chunk
    for T in a.lengths:
        args = gdn_inputs(a.batch, T, Hk, H, d, d, key)
        flops = a.batch * T * H * (2 * C * 5 * d + 6 * d * d)
        ours = measure(lambda *x: chunk_gated_delta_rule(*x, chunk_size=C, impl=impl), args, a.reps)
        base = measure(lambda *x: gdn_ref.chunked_xla(*x, chunk_size=C), args, a.reps)
        print(row(T, a.batch, flops, ours, base), flush=True)


def bench_sharded(a, impl, gdn_impl, key):
    """Ring attention (zig-zag order) and context-parallel DeltaNet over n local devices with T tokens each, against
    the ideal: one device running the whole n*T sequence, divided by n. overhead = t_sharded / (t_single / n) - 1."""
    n = a.devices or jax.local_device_count()
    mesh = jax.make_mesh((n,), (AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])
    nh, nkv = (int(x) for x in a.heads.split(":"))
    Hk, H = (int(x) for x in a.gdn_heads.split(":"))
    print(f"\n== sharded over {n} device(s): per-device T, time of fwd+bwd, overhead vs one device doing the whole "
          "sequence divided by n")
    print("      T | ring ms  single/n ms  overhead | cp-gdn ms  single/n ms  overhead")
    shard = lambda body, n_in, n_out: jax.shard_map(body, mesh=mesh, in_specs=(P(None, AXIS),) * n_in,
                                                    out_specs=n_out, check_vma=False)
    for T in a.lengths:
        if T * n > a.max_single:
            print(f"{T:>7} | skipped: the single-device comparison would need {T * n} tokens on one device")
            continue
        args = attention_inputs(a.batch, T * n, nh, nkv, a.head_dim, jnp.dtype(a.dtype), key)
        # Random inputs need no reordering; only the positions say which global token each slot holds.
        pos = jnp.broadcast_to(jnp.asarray(load_balance.permutation(T * n, n), jnp.int32), (a.batch, T * n))
        ring = shard(lambda q, k, v, p: ring_attention(q, k, v, axis_name=AXIS, positions=p, impl=impl), 4,
                     P(None, AXIS))
        t_ring = sum(measure(lambda q, k, v: ring(q, k, v, pos), args, a.reps))
        t_one = sum(measure(lambda q, k, v: flash_attention(q, k, v, impl=impl), args, a.reps)) / n
        gargs = gdn_inputs(a.batch, T * n, Hk, H, a.gdn_dim, a.gdn_dim, key)
        cp = shard(lambda *x: context_parallel_gated_delta_rule(*x, axis_name=AXIS, chunk_size=a.chunk,
                                                                 impl=gdn_impl), 5, (P(None, AXIS), P()))
        t_cp = sum(measure(cp, gargs, a.reps))
        t_gone = sum(measure(lambda *x: chunk_gated_delta_rule(*x, chunk_size=a.chunk, impl=gdn_impl), gargs,
                             a.reps)) / n
        print(f"{T:>7} | {t_ring * 1e3:7.2f}  {t_one * 1e3:11.2f}  {t_ring / t_one - 1:+8.1%} | "
              f"{t_cp * 1e3:9.2f}  {t_gone * 1e3:11.2f}  {t_cp / t_gone - 1:+8.1%}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", default="4096,8192,16384,32768,65536,131072", help="tokens per device")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", default="16:2", help="attention q:kv heads")
    p.add_argument("--head-dim", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--gdn-heads", default="16:32", help="DeltaNet qk:v heads")
    p.add_argument("--gdn-dim", type=int, default=128)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--impl", default=None, help="kernel implementation (default: kernels/backend.py's choice)")
    p.add_argument("--devices", type=int, default=0, help="devices for the sharded part (default: all local)")
    p.add_argument("--max-single", type=int, default=131072, help="longest single-device comparison sequence")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--only", default="attention,gdn,sharded")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke run with interpreted Pallas kernels")
    a = p.parse_args(argv)
    if a.quick:
        a.lengths, a.heads, a.head_dim, a.gdn_heads, a.gdn_dim = "256,512", "4:2", 64, "2:4", 32
        a.dtype, a.reps, a.impl, a.devices = "float32", 2, a.impl or "pallas_tpu", a.devices or 2
    a.lengths = [int(x) for x in a.lengths.split(",")]
    a.baseline_impl = "cudnn" if jax.default_backend() == "gpu" else None
    impl = backend.candidates("attention", a.impl)[0]
    gdn_impl = backend.candidates("gdn", a.impl)[0]
    dev = jax.devices()[0]
    print(f"device: {dev.platform} {dev.device_kind} x{jax.local_device_count()}, jax {jax.__version__}")
    key = jax.random.PRNGKey(0)
    if "attention" in a.only:
        bench_attention(a, impl, key)
    if "gdn" in a.only:
        bench_gdn(a, gdn_impl, key)
    if "sharded" in a.only:
        bench_sharded(a, impl, gdn_impl, key)


if __name__ == "__main__":
    hugepages.ensure()  # as the `a1jax` command runs: large buffers on huge pages
    main()
