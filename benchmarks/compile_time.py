"""Lower and compile time of a model's training loss + gradient, scan-over-layers against a layer loop.

    python -m benchmarks.compile_time [--preset qwen35_35b_a3b] [--seq 2048] [--remat full]

Uses abstract parameters only (nothing is allocated), so the 35B-A3B model compiles on a CPU-only machine. Both
variants run in the same process; the ratio is the figure to follow.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from a1jax import hugepages, model


def compile_seconds(cfg, seq: int) -> tuple[float, float]:
    params = model.abstract_params(cfg, include_mtp=False)
    tokens = jax.ShapeDtypeStruct((1, seq), jnp.int32)

    def loss(p, t):
        out = model.forward(p, t, cfg, return_logits=False)
        logp, _ = model.token_logprobs(out.hidden, model.lm_head_weight(p, cfg), t, cfg.loss_chunk_size)
        return -jnp.mean(logp) + out.aux["moe_loss"]

    t0 = time.perf_counter()
    lowered = jax.jit(jax.value_and_grad(loss)).lower(params, tokens)
    t1 = time.perf_counter()
    lowered.compile()
    return t1 - t0, time.perf_counter() - t1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="qwen35_35b_a3b")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--remat", default="full")
    args = parser.parse_args(argv)
    print(f"{args.preset}, tokens [1, {args.seq}], remat {args.remat}, device {jax.devices()[0].device_kind}")
    for scan in (True, False):
        cfg = model.presets.get(args.preset, scan_layers=scan, remat_policy=args.remat)
        lower_s, compile_s = compile_seconds(cfg, args.seq)
        print(f"  {'scan over blocks' if scan else 'layer loop      '}: lower {lower_s:5.1f} s, "
              f"compile {compile_s:6.1f} s")


if __name__ == "__main__":
    hugepages.ensure()  # as the `a1jax` command runs: large buffers on huge pages
    main()
