"""Prefill and decode tokens/s of the generation engine, against a naive non-cached loop in the same run (a script).

    python -m benchmarks.rollout [--config experiments/quickstart.py] [--batch 8] [--prompt 512] [--new 128]

The model is the experiment's (random weights: speed does not depend on them). Prefill = `Engine.extend` of a
prompt per row; decode = `Engine.generate` with no stop id, so every row runs `--new` steps of the jitted
while_loop; naive = re-running the full forward over the whole (fixed-size, so compiled once) buffer for each new
token. Compile time is reported apart. Name the device when you quote the numbers.
"""
from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from a1jax import hugepages, model
from a1jax.rollout import Engine, SamplingParams
from a1jax.train import experiment


@functools.partial(jax.jit, static_argnums=(1,))
def _naive_step(params, cfg, buf, t):
    """One greedy token by a full forward over buf [B, L]; the token lands at column t. Only the needed position
    goes through the LM head, so the comparison measures the cache, not a [B, L, V] logits tensor."""
    hidden = model.forward(params, buf, cfg, return_logits=False).hidden
    h = jax.lax.dynamic_slice_in_dim(hidden, t - 1, 1, axis=1)
    tok = jnp.argmax(model.logits_from_hidden(params, h, cfg)[:, 0], axis=-1)
    return jax.lax.dynamic_update_index_in_dim(buf, tok.astype(buf.dtype)[:, None], t, axis=1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/quickstart.py")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--naive-steps", type=int, default=16, help="tokens timed for the non-cached loop (0: none)")
    ap.add_argument("--max-len", type=int, default=0,
                    help="the engine's cache slots at most (default 2 x (prompt + new))")
    ap.add_argument("--min-slots", type=int, default=512,
                    help="the cache's starting size (it doubles up to --max-len as needed); --min-slots equal to "
                         "--max-len: the whole cache from the start, the engine before it could grow")
    args = ap.parse_args(argv)
    cfg = experiment.model_config(experiment.load(args.config))
    params = model.unbox(model.init(cfg, jax.random.PRNGKey(0), include_mtp=False))
    B, P, N = args.batch, args.prompt, args.new
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, P)).astype(np.int32)
    eng = Engine(params, cfg, batch_size=B, max_len=args.max_len or 2 * (P + N), stop_ids=(-1,),
                 sampling=SamplingParams.greedy(), max_new_tokens=N, min_slots=args.min_slots)

    def run_once():
        eng.reset()
        for r in range(B):
            eng.start_row(r)
        t0 = time.perf_counter()
        eng.extend({r: prompts[r].tolist() for r in range(B)})
        jax.block_until_ready(eng.last_logits)
        t1 = time.perf_counter()
        eng.generate(list(range(B)))
        return t1 - t0, time.perf_counter() - t1

    t = time.perf_counter()
    run_once()
    compile_s = time.perf_counter() - t
    prefill_s, decode_s = run_once()
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; model {cfg.num_hidden_layers} layers, "
          f"hidden {cfg.hidden_size}, vocab {cfg.vocab_size}; batch {B}, prompt {P}, new {N}; cache {eng.slots} of "
          f"{eng.max_len} slots")
    print(f"engine  compile+first run {compile_s:7.2f}s")
    print(f"engine  prefill {B * P / prefill_s:10.1f} tok/s  ({prefill_s:.3f}s)")
    print(f"engine  decode  {B * N / decode_s:10.1f} tok/s  ({decode_s:.3f}s, {1e3 * decode_s / N:.2f} ms/step)")
    if args.naive_steps <= 0:
        return

    buf = jnp.zeros((B, P + N), jnp.int32).at[:, :P].set(prompts)
    buf = _naive_step(params, cfg, buf, P)  # compile
    jax.block_until_ready(buf)
    steps = min(args.naive_steps, N - 1)
    t = time.perf_counter()
    for i in range(1, steps + 1):
        buf = _naive_step(params, cfg, buf, P + i)
    jax.block_until_ready(buf)
    naive_s = time.perf_counter() - t
    print(f"naive   decode  {B * steps / naive_s:10.1f} tok/s  ({1e3 * naive_s / steps:.2f} ms/step, full forward "
          f"over {P + N} tokens per step)")


if __name__ == "__main__":
    hugepages.ensure()  # as the `a1jax` command runs: large buffers on huge pages
    main()
