"""`a1jax generate`: one chat turn from a checkpoint, for a quick look at a model.

    a1jax generate --checkpoint CKPT_DIR --prompt "What is 2+2?" [--temperature 0]

CKPT_DIR is a converted params directory (`a1jax convert --from-hf ...`); training workdirs are not read.
Prints the reply (thinking included).
"""
from __future__ import annotations

import argparse

from a1jax.rollout.cli import add_sampling_args, sampling_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="chat: one reply to --prompt from a checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="converted params directory (a1jax convert) or training workdir")
    p.add_argument("--prompt", required=True)
    p.add_argument("--system", default=None, help="optional system message")
    p.add_argument("--no-thinking", action="store_true", help="render with enable_thinking=False")
    p.add_argument("--tokenizer", default="qwen3_5")
    p.add_argument("--max-new-tokens", type=int, default=512)
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from a1jax.data import tokenizers
    from a1jax.data.chat import render
    from a1jax.rollout.engine import make_engine
    from a1jax.train.checkpoint import load_model
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}]
    tok = tokenizers.load(args.tokenizer)
    prompt = tok.encode(render(messages, add_generation_prompt=True, enable_thinking=not args.no_thinking))
    cfg, params = load_model(args.checkpoint)
    eng = make_engine(cfg, params, tok, sampling=sampling_from_args(args), batch_size=1,
                      max_len=len(prompt) + args.max_new_tokens + 1, max_new_tokens=args.max_new_tokens,
                      stop=args.stop, seed=args.seed)
    eng.start_row(0)
    eng.extend({0: prompt})
    out = eng.generate([0])[0]
    print(tok.decode([t for t in out["tokens"] if t not in tok.stop_ids]))
    return 0
