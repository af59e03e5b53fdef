"""Step time and tokens/s of an experiment's train step, to follow over time (a script, not a test).

    python -m benchmarks.train_step [--config experiments/quickstart.py] [--steps 5] [--config.x.y=value ...]

Runs the real jitted step (with donation, on the experiment's mesh) on random batches of the experiment's shape and
prints compile time, median step time, tokens/s and tokens/s per device, plus the same for a forward-only pass as the
in-process baseline. Absolute numbers mean something only on an accelerator: name the device when you quote them.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import numpy as np

from a1jax import hugepages, model, sharding, stages
from a1jax.train import experiment, optim, steps
from a1jax.train.state import init_state, state_shardings


def random_batch(cfg, batch_size: int, seq_len: int, num_domains: int, supervised: float, seed: int = 0) -> dict:
    """Random tokens; the loss mask supervises `supervised` of each row in spans of 64, like assistant turns."""
    r = np.random.default_rng(seed)
    tokens = r.integers(0, cfg.vocab_size, (batch_size, seq_len)).astype(np.int32)
    spans = r.random((batch_size, -(-seq_len // 64))) < supervised
    mask = np.repeat(spans, 64, axis=1)[:, :seq_len].astype(np.float32)
    return dict(tokens=tokens, targets=np.roll(tokens, -1, axis=1), loss_mask=mask,
                segment_ids=np.ones_like(tokens), positions=np.tile(np.arange(seq_len, dtype=np.int32),
                                                                      (batch_size, 1)),
                domain_ids=r.integers(0, num_domains, (batch_size, seq_len)).astype(np.int32))


def timed(fn, args, steps: int):
    """Median wall time of `fn(*args)`; a step's returned state feeds the next call (the old one was donated)."""
    times = []
    for i in range(steps + 1):  # the first call is a warm-up
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        if i:
            times.append(time.perf_counter() - t)
        if isinstance(out, tuple):
            args = (out[0], *args[1:])
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/quickstart.py")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--supervised", type=float, default=0.2,
                        help="fraction of supervised tokens (0.2 is the quickstart data's)")
    args, extra = parser.parse_known_args(argv)
    exp = stages.validate(experiment.apply_overrides(experiment.load(args.config), extra))
    cfg, config = exp.model, exp.config
    opt = config.optimizer.copy_and_resolve_references()
    opt.total_steps = config.train.steps
    tx, schedule = optim.make_optimizer(opt)
    ctx = steps.StepContext(model=cfg, tx=tx, schedule=schedule, num_domains=4,
                            microbatches=config.train.microbatches)
    mesh = sharding.make_mesh(dict(config.mesh))
    rules = sharding.merged_rules(dict(config.get("sharding_rules", {}) or {}))
    abstract = jax.eval_shape(functools.partial(init_state, cfg, tx), jax.random.key(0))
    sh = state_shardings(abstract, mesh, rules)
    bsh = sharding.batch_sharding(mesh, rules)
    state = jax.jit(functools.partial(init_state, cfg, tx), out_shardings=sh)(jax.random.key(0))
    batch = jax.device_put(random_batch(cfg, exp.data.batch_size, exp.data.seq_len, 4, args.supervised), bsh)

    fwd = jax.jit(lambda p, b: model.forward(p, b["tokens"], cfg, positions=b["positions"],
                                             segment_ids=b["segment_ids"], return_logits=False).hidden)
    fwd_s = timed(fwd, (state.params, batch), args.steps)  # before the step donates `state`
    step = jax.jit(functools.partial(exp.stage.step, ctx), in_shardings=(sh, bsh),
                   out_shardings=(sh, None), donate_argnums=0)
    t = time.perf_counter()
    step = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    step_s = timed(step, (state, batch), args.steps)
    tokens = exp.data.batch_size * exp.data.seq_len
    n = jax.device_count()
    print(f"device: {jax.devices()[0].device_kind} x {n}   config: {args.config}   tokens/step: {tokens:,}")
    print(f"compile: {compile_s:.1f} s")
    print(f"train step: {step_s * 1e3:.1f} ms   {tokens / step_s:,.0f} tokens/s   "
          f"{tokens / step_s / n:,.0f} tokens/s/device")
    print(f"forward only (baseline, same process): {fwd_s * 1e3:.1f} ms   {tokens / fwd_s:,.0f} tokens/s   "
          f"step/forward = {step_s / fwd_s:.2f}")


if __name__ == "__main__":
    hugepages.ensure()  # as the `a1jax` command runs: large buffers on huge pages
    main()
