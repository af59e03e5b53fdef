"""Where a train step (or a forward) spends its time, per part of the model, from a jax.profiler trace.

    .venv/bin/python -m benchmarks.profile_step [--shape 1,2048] [--forward] [--top 8] [--trace DIR] [--quick]
    .venv/bin/python -m benchmarks.profile_step --config experiments/recipe_tiny_sft.py [--config.x.y=value ...]

Runs the model of `benchmarks/peers.py` (the issue's tiny Qwen3.5-MoE; --quick: its smoke-test sizes), or with
--config an experiment's own model at its own batch shape (--shape overrides it): the trainer's
`sft_step` jitted with donated state (or a forward with last-position logits), once to compile, then once under
`jax.profiler.trace`. XLA:CPU records one trace event per executed thunk; each event's time *without* the events
nested in it (a while loop's body, a conditional's branch) is attributed, through the compiled HLO's op_name
metadata, to the named scope the model put around the op (`deltanet`, `attention`, `mlp`, `lm_head_loss`,
`optimizer`; a1jax/model/transformer.py, a1jax/train/steps.py) and to its pass: "fwd", "bwd" (inside `transpose(...)`)
or "remat" (a forward recomputed in the backward). Ops without a scope (embedding, the guarded update's selects, fusions
XLA left unnamed) count as "other". Prints the table, then each part's heaviest ops. On 2 shared cores, read the
shares: absolute times move with the load (printed).
"""
from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from a1jax import hugepages, model
from a1jax.train import optim, steps
from a1jax.train.state import TrainState
from benchmarks import peers

PARTS = ("deltanet", "attention", "mlp", "lm_head_loss", "optimizer")
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$', re.M)
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_NOISE = re.compile(r"jit\(\w+\)/|while/body/|eval_jaxpr/|checkpoint/|rematted_computation/|transpose\(|jvp\(|\)")


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the JAX op_name in its metadata ("" where XLA left none, e.g. some fusions)."""
    out = {}
    for name, rest in _INSTRUCTION.findall(hlo_text):
        found = _OP_NAME.search(rest)
        out[name] = found.group(1) if found else ""
    return out


def self_times(trace_dir: str) -> collections.Counter:
    """Microseconds per trace event name, each event counted without the events nested inside it (same thread)."""
    path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    events = [e for e in json.load(gzip.open(path))["traceEvents"] if e.get("ph") == "X"]
    threads = collections.defaultdict(list)
    for e in events:
        threads[(e["pid"], e["tid"])].append(e)
    out = collections.Counter()
    for evs in threads.values():
        evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack = []
        for e in evs:
            e["self"] = e.get("dur", 0)
            while stack and stack[-1]["ts"] + stack[-1].get("dur", 0) <= e["ts"]:
                stack.pop()
            if stack:
                stack[-1]["self"] -= e.get("dur", 0)
            stack.append(e)
        for e in evs:
            out[e["name"]] += e["self"]
    return out


def attribute(times: collections.Counter, names: dict[str, str]):
    """({(part, pass): ms}, {part: Counter(short op name -> ms)}) over the thunks of the compiled program."""
    table, ops = collections.Counter(), collections.defaultdict(collections.Counter)
    for thunk, us in times.items():
        if thunk not in names:
            continue  # Python and runtime events (the trace also records the host side and plugin start-up)
        op = names[thunk]
        part = next((p for p in PARTS if re.search(rf"[/(]{p}[/)]", "/" + op)), "other")
        phase = "remat" if "rematted_computation" in op else "bwd" if "transpose(" in op else "fwd"
        table[(part, phase)] += us / 1e3
        ops[part][_NOISE.sub("", op).strip("/") or thunk] += us / 1e3
    return table, ops


def experiment_model(path: str, overrides) -> tuple:
    """(model config, (batch_size, seq_len)) of an experiment config file, with `--config.x=y` overrides."""
    from a1jax import stages
    from a1jax.train import experiment
    exp = stages.validate(experiment.apply_overrides(experiment.load(path), overrides))
    return exp.model, (int(exp.data.batch_size), int(exp.data.seq_len))


def build(cfg, shape: tuple[int, int], forward: bool):
    params = jax.tree.map(jnp.array, model.init(cfg, jax.random.key(0), include_mtp=False))
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, shape)
    if forward:
        p, tokens = model.unbox(params), jnp.asarray(ids, jnp.int32)

        def fwd(params, tokens):
            hidden = model.forward(params, tokens, cfg, return_logits=False).hidden
            return model.logits_from_hidden(params, hidden[:, -1], cfg)
        fn = jax.jit(fwd)
        return fn, (p, tokens), lambda: jax.block_until_ready(fn(p, tokens))
    tx, schedule = optim.make_optimizer(argparse.Namespace(**peers.OPTIMIZER, warmup_steps=0, total_steps=1,
                                                           schedule="constant", min_lr_ratio=1.0))
    zero = lambda: jnp.zeros((), jnp.int32)
    box = [TrainState(step=zero(), params=params, opt_state=tx.init(params), skipped_total=zero(),
                      rng=jax.random.key_data(jax.random.key(0)), skipped_consecutive=zero())]
    fn = jax.jit(functools.partial(steps.sft_step, steps.StepContext(model=cfg, tx=tx, schedule=schedule)),
                 donate_argnums=0)
    batch = peers._train_batch(ids)

    def run():
        box[0], _ = jax.block_until_ready(fn(box[0], batch))
    return fn, (box[0], batch), run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="", help="batch,length (default 1,2048, or the --config experiment's)")
    p.add_argument("--forward", action="store_true", help="profile a forward (last-position logits), not a step")
    p.add_argument("--quick", action="store_true", help="smoke-test model sizes (benchmarks/peers.py --quick)")
    p.add_argument("--top", type=int, default=8, help="heaviest ops listed per part")
    p.add_argument("--trace", default="", help="keep the trace here (default: a temporary directory)")
    p.add_argument("--config", default="", help="profile this experiment's model (e.g. experiments/recipe_tiny_sft.py)")
    args, extra = p.parse_known_args(argv)
    if extra and not args.config:
        p.error(f"unrecognized arguments: {' '.join(extra)} (--config.x=y overrides need --config)")
    if args.config:
        cfg, shape = experiment_model(args.config, extra)
    else:
        cfg, shape = peers.model_config(args.quick), (1, 2048)
    if args.shape:
        shape = tuple(int(x) for x in args.shape.split(","))
    fn, example, run = build(cfg, shape, args.forward)
    names = op_names(fn.lower(*example).compile().as_text())
    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    t = time.perf_counter()
    run()
    wall = time.perf_counter() - t
    trace_dir = args.trace or tempfile.mkdtemp(prefix="a1jax_profile_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    run()
    jax.profiler.stop_trace()
    table, ops = attribute(self_times(trace_dir), names)
    total = sum(table.values())
    what = "forward" if args.forward else "train step"
    print(f"{what} {shape[0]} x {shape[1]}: {wall * 1e3:,.0f} ms untraced (first call {first:.1f} s), "
          f"{total:,.0f} ms of thunks traced; load average {os.getloadavg()[0]:.1f}")
    print(f"{'part':14s} {'ms':>8s} {'share':>6s} {'fwd':>8s} {'remat':>8s} {'bwd':>8s}")
    for part in PARTS + ("other",):
        row = [table[(part, ph)] for ph in ("fwd", "remat", "bwd")]
        print(f"{part:14s} {sum(row):8.0f} {100 * sum(row) / max(total, 1e-9):5.1f}% "
              + " ".join(f"{x:8.0f}" for x in row))
    for part in PARTS + ("other",):
        if ops[part] and args.top:
            print(f"-- {part}: " + "; ".join(f"{k} {v:.0f}" for k, v in ops[part].most_common(args.top)))
    return dict(wall_ms=wall * 1e3, parts={f"{a}/{b}": v for (a, b), v in table.items()})


if __name__ == "__main__":
    hugepages.ensure()  # as the `a1jax` command runs: large buffers on huge pages
    main()
