"""Can the tiny recipe model copy? A probe of how many steps it needs to learn copying when the signal is dense.

    .venv/bin/python -m benchmarks.copy_task                         # the tiny recipe's body, vocabulary 512
    .venv/bin/python -m benchmarks.copy_task --vocab 248320 --tie    # the real vocabulary size, tied embeddings

Each row is L random tokens, a separator, and the same L tokens again; the loss is on the second copy only, so every
target is a copy (B*L of them per step). Prints loss and copy accuracy every 50 steps, and the first step at which
the accuracy passes 0.9. The tiny recipe's domains need the same skill (an item name, a number or a topic copied
from the prompt into a tool call or a reply), but a stage-1 step carries only a few dozen such targets among a few
hundred template tokens, so SFT from random weights never gets past the plateau; the tiny recipe therefore starts
from this task (`a1jax warmup`, a1jax/train/warmup.py, which this script runs; docs/recipe.md, "Why the tiny recipe
starts with a copy warm-up"). `--save DIR` writes the params for `a1jax train --init_from DIR`.
The model is `recipe_tiny_sft.TINY_MODEL` (4 layers: 3 DeltaNet + 1 attention, 8 experts top-2, hidden 128).

Measured (2026-12-05, 2-core CPU, one XLA thread): copying is learned after a plateau whose length grows with the
number of distinct tokens. With every layer full attention (`--full_attention_interval 1`), accuracy first passes
0.9 at step 172 with `--vocab 512` and at step 227 with `--vocab 1024`; with `--vocab 4096` (the compact
vocabulary's size) the loss is still at chance (ln 4096 = 8.318) after 300 steps, for the 3:1 body, the
all-attention body and `--lr 0.01` alike (all-attention: still at chance at step 700). Tying the output projection
to the embedding removes most of that plateau: all-attention, `--vocab 4096 --tie` passes 0.9 at step 166, and the
recipe's own 3:1 body, `--vocab 4096 --tie`, at step 199 (157 s for 400 steps).
"""
from __future__ import annotations

import argparse
import importlib.util
import os

from a1jax import hugepages
from a1jax.convert.checkpoint import save_params
from a1jax.model import presets
from a1jax.train import warmup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model_overrides() -> dict:
    spec = importlib.util.spec_from_file_location("recipe_tiny_sft",
                                                  os.path.join(REPO, "experiments", "recipe_tiny_sft.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return dict(mod.TINY_MODEL)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--length", type=int, default=16, help="tokens per copy (L)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-length", type=int, default=0,
                   help="0: every row copies at the same offset; N: after --fixed-steps, rows copy N..L ids at "
                        "varying offsets (the tiny recipe's warm-up uses 4)")
    p.add_argument("--fixed-steps", type=int, default=250)
    p.add_argument("--tie", action="store_true", help="tie the output projection to the embedding")
    p.add_argument("--full_attention_interval", type=int, default=None,
                   help="every k-th layer full attention (1: all of them); default the tiny recipe's 3:1")
    p.add_argument("--save", default="", help="write the trained params here (a checkpoint directory that "
                   "`a1jax train --init_from` or `config.init_from` can start from)")
    args = p.parse_args()
    overrides = {**tiny_model_overrides(), "vocab_size": args.vocab, "tie_word_embeddings": args.tie}
    if args.full_attention_interval is not None:
        overrides["full_attention_interval"] = args.full_attention_interval
    cfg = presets.tiny(**overrides)
    s = warmup.CopySettings(steps=args.steps, batch=args.batch, length=args.length, learning_rate=args.lr,
                            min_length=args.min_length, fixed_steps=args.fixed_steps)
    print(f"vocab {args.vocab}, tie {args.tie}, {s.batch} rows x {s.length} copy targets per step, lr {args.lr}")
    params, summary = warmup.copy_warmup(cfg, s, log=lambda line: print(line, flush=True))
    print(f"copy accuracy: {warmup.learned_text(summary, s)}")
    if args.save:
        save_params(args.save, cfg, params)
        print(f"params written to {args.save}")


if __name__ == "__main__":
    hugepages.ensure()  # as the `a1jax` command runs: large buffers on huge pages
    main()
