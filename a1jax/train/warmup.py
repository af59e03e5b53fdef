"""A synthetic copy warm-up: a stand-in for the pretraining that a model trained from scratch does not have.

    a1jax warmup --config experiments/recipe_tiny_sft.py --out DIR [--steps 250]
    a1jax train --config experiments/recipe_tiny_sft.py --workdir SFT --init_from DIR

Every row is L random token ids, a separator and the same L ids again, with the loss on the second copy only
(Adam, constant learning rate). A pretrained model can copy a name or a number from its context into a tool call;
a tiny model that starts from random weights cannot, and learns it from agentic demonstrations only after a long
plateau, because a demonstration holds a few such targets among hundreds of template tokens. On the copy task every
target is one, so the plateau passes in a couple of hundred small steps. Measured on the tiny recipe's model (2-core
CPU, one XLA thread; `benchmarks/copy_task.py` runs the same function): copy accuracy passes 0.9 at step 199 of
32 x 16 targets over the compact vocabulary (about 80 s), and tool_calling trained from that start for 250 SFT steps
reaches 7/32 greedy successes where the same SFT from random weights stays at 0/32 (README, "Results").

Writes DIR/params and DIR/model_config.json (as `a1jax convert --from-hf` does, so `--init_from DIR` loads it) and
DIR/vocabulary.json (the experiment's tokenizer, so the training run's vocabulary check applies), then
DIR/warmup.json (steps, final loss and accuracy, the step at which accuracy first passed 0.9) last: a DIR with
warmup.json is complete, and the command refuses to overwrite one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable

import numpy as np

from a1jax import storage

DONE = "warmup.json"


@dataclasses.dataclass(frozen=True)
class CopySettings:
    steps: int = 250
    batch: int = 32  # rows per step
    length: int = 16  # copy targets per row
    learning_rate: float = 3e-3
    seed: int = 0
    first_id: int = 10  # copied ids are drawn from [first_id, vocab_size)
    separator: int = 1  # the id between the two copies

    def __post_init__(self):
        for name in ("steps", "batch", "length"):
            if getattr(self, name) < 1:
                raise ValueError(f"copy warm-up: {name}={getattr(self, name)}; expected an integer >= 1")
        if not self.learning_rate > 0:
            raise ValueError(f"copy warm-up: learning_rate={self.learning_rate}; expected > 0")


def copy_rows(rng: np.random.Generator, s: CopySettings, vocab_size: int) -> np.ndarray:
    """[batch, 2L+1] int32 rows: L random ids, the separator, the same L ids."""
    if vocab_size <= s.first_id + 1:
        raise ValueError(f"copy warm-up: vocab_size={vocab_size} leaves no ids to copy above first_id={s.first_id}")
    first = rng.integers(s.first_id, vocab_size, (s.batch, s.length))
    sep = np.full((s.batch, 1), s.separator)
    return np.concatenate([first, sep, first], axis=1).astype(np.int32)


def copy_warmup(cfg, s: CopySettings, params=None,
                log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Trains `params` (default: a fresh init of `cfg` with s.seed) on the copy task; returns (params, summary) with
    summary = {steps, loss, accuracy, learned_at (first step with accuracy > 0.9, or None), seconds}."""
    import jax
    import jax.numpy as jnp
    import optax

    from a1jax import model

    if params is None:
        params = model.unbox(model.init(cfg, jax.random.key(s.seed), include_mtp=cfg.mtp_num_hidden_layers > 0))
    tx = optax.adam(s.learning_rate)
    opt = tx.init(params)
    rng = np.random.default_rng(s.seed)
    B, L = s.batch, s.length
    T = 2 * L  # inputs: row[:-1]
    mask = jnp.asarray(np.arange(T) >= L, jnp.float32)[None].repeat(B, 0)
    positions, segments = jnp.arange(T)[None].repeat(B, 0), jnp.ones((B, T), jnp.int32)

    def loss_fn(params, inputs, targets):
        out = model.forward(params, inputs, cfg, positions=positions, segment_ids=segments, return_logits=False)
        logp, _ = model.token_logprobs(out.hidden, model.lm_head_weight(params, cfg), targets, cfg.loss_chunk_size,
                                       mask=mask)
        logits = model.logits_from_hidden(params, out.hidden, cfg)
        correct = (jnp.argmax(logits, -1) == targets) * mask
        return -jnp.sum(logp * mask) / jnp.sum(mask), jnp.sum(correct) / jnp.sum(mask)

    @jax.jit
    def step(params, opt, row):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, row[:, :-1], row[:, 1:])
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss, acc

    start, learned = time.perf_counter(), None
    loss = acc = float("nan")
    for i in range(1, s.steps + 1):
        params, opt, loss, acc = step(params, opt, jnp.asarray(copy_rows(rng, s, cfg.vocab_size)))
        if learned is None and float(acc) > 0.9:
            learned = i
        if i % 50 == 0 or i in (1, s.steps):
            log(f"copy warm-up step {i:4d}/{s.steps}  loss {float(loss):.3f}  copy accuracy {float(acc):.3f}  "
                f"{time.perf_counter() - start:.0f}s")
    summary = dict(steps=s.steps, loss=float(loss), accuracy=float(acc), learned_at=learned,
                   seconds=round(time.perf_counter() - start, 1))
    return params, summary


def add_parser(sub):
    p = sub.add_parser("warmup", help="a synthetic copy warm-up for a model trained from scratch (a pretraining "
                                      "stand-in; `a1jax train --init_from OUT` starts from it)")
    p.add_argument("--config", required=True, help="experiments/FILE.py[:ARG]: its model and tokenizer are used")
    p.add_argument("--out", required=True, help="the checkpoint directory to write (must not hold a warm-up yet)")
    defaults = CopySettings()
    for f in dataclasses.fields(CopySettings):
        p.add_argument(f"--{f.name}", type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    p.set_defaults(func=run, accepts_config_overrides=True)


def run(args) -> int:
    from a1jax.convert.checkpoint import save_params
    from a1jax.data import tokenizers
    from a1jax.train import experiment, vocabulary

    config = experiment.apply_overrides(experiment.load(args.config), args.config_overrides)
    cfg = experiment.model_config(config)
    tok = tokenizers.load(config.data.tokenizer)
    if tok.vocab_size > cfg.vocab_size:
        raise ValueError(f"{args.config}: tokenizer {tok.name} has {tok.vocab_size} ids but model.vocab_size is "
                         f"{cfg.vocab_size}")
    if storage.exists(os.path.join(args.out, DONE)):
        raise ValueError(f"--out {args.out}: holds a finished warm-up ({DONE}); remove it or choose another directory")
    if storage.exists(os.path.join(args.out, "params")):
        raise ValueError(f"--out {args.out}: holds params but no {DONE} (an interrupted warm-up?); remove the "
                         f"directory and run again")
    s = CopySettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CopySettings)})
    params, summary = copy_warmup(cfg, s, log=lambda line: print(line, flush=True))
    save_params(args.out, cfg, params)
    vocabulary.record(args.out, tok)
    storage.write_atomic(os.path.join(args.out, DONE), json.dumps({**summary, "settings": dataclasses.asdict(s)},
                                                                  indent=1))
    learned = f"passed 0.9 at step {summary['learned_at']}" if summary["learned_at"] else "never passed 0.9"
    print(f"copy warm-up: accuracy {summary['accuracy']:.3f} ({learned}) in {summary['seconds']}s; "
          f"params in {args.out}")
    return 0
