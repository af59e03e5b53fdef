"""`a1jax rollout`: run agent tasks through the engine and write trajectory records as JSONL.

    a1jax rollout --checkpoint CKPT_DIR --tasks tasks.jsonl --out rollouts.jsonl [--config rollout.json]

CKPT_DIR is a converted params directory (`a1jax convert --from-hf ...`, read by a1jax.convert.load_params) or a
training workdir (`a1jax train --workdir DIR`: its newest checkpoint is used). Each task line is a
trajectory-schema record (messages up to the query, tools, domain, id); an optional
"environment": {"responses": {tool_name: text}} answers that task's calls (a ScriptedEnvironment) until real
environments exist; without it every call is answered with an error.
--config is a JSON file {"sampling": {...SamplingParams}, "rollout": {...RolloutConfig}, "engine": {batch_size,
max_len, max_new_tokens}}; flags given on the command line win.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from a1jax.rollout.agent import Rollout, RolloutConfig
from a1jax.rollout.environment import ScriptedEnvironment
from a1jax.rollout.sampling import SamplingParams


def add_sampling_args(p) -> None:
    d = SamplingParams()
    p.add_argument("--temperature", type=float, default=None, help=f"0 = greedy (default {d.temperature})")
    p.add_argument("--top-p", type=float, default=None, help=f"default {d.top_p}")
    p.add_argument("--top-k", type=int, default=None, help=f"0 = off (default {d.top_k})")
    p.add_argument("--min-p", type=float, default=None, help=f"default {d.min_p}")
    p.add_argument("--presence-penalty", type=float, default=None, help=f"default {d.presence_penalty}")
    p.add_argument("--repetition-penalty", type=float, default=None, help=f"default {d.repetition_penalty}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop string (repeatable), besides <|im_end|> and <|endoftext|>")


def sampling_from_args(args, base: dict | None = None) -> SamplingParams:
    fields = dict(base or {})
    for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "repetition_penalty"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    return SamplingParams(**fields)


def add_parser(sub) -> None:
    p = sub.add_parser("rollout", help="run multi-turn agent tasks and write trajectory records (JSONL)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="converted params directory (a1jax convert) or training workdir")
    p.add_argument("--tasks", required=True, metavar="FILE", help="JSONL of tasks")
    p.add_argument("--out", required=True, metavar="FILE.jsonl")
    p.add_argument("--config", default=None, metavar="FILE.json", help="sampling / rollout / engine settings")
    p.add_argument("--tokenizer", default="qwen3_5")
    p.add_argument("--batch-size", type=int, default=None, help="rows decoded together (default 8)")
    p.add_argument("--max-len", type=int, default=None, help="cache slots shared by the batch (default 32768)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="per model call (default 4096)")
    add_sampling_args(p)
    p.set_defaults(func=run)


def _env_for(task: dict):
    responses = (task.get("environment") or {}).get("responses") or {}
    names = [t.get("function", t)["name"] for t in task.get("tools") or ()]
    return ScriptedEnvironment({n: responses.get(n, f"Error: no environment is attached for tool {n!r}.")
                                for n in names})


def run(args) -> int:
    from a1jax.data import tokenizers
    conf = json.load(open(args.config)) if args.config else {}
    allowed = {"sampling": SamplingParams, "rollout": RolloutConfig, "engine": None}
    for section, fields in conf.items():
        if section not in allowed:
            raise ValueError(f"--config: unknown section {section!r}; allowed: {sorted(allowed)}")
        known = ({"batch_size", "max_len", "max_new_tokens"} if allowed[section] is None
                 else {f.name for f in dataclasses.fields(allowed[section])})
        if set(fields) - known:
            raise ValueError(f"--config: unknown {section} field(s) {sorted(set(fields) - known)}; "
                             f"allowed: {sorted(known)}")
    engine_conf = {"batch_size": 8, "max_len": 32768, "max_new_tokens": 4096, **conf.get("engine", {})}
    for name in ("batch_size", "max_len", "max_new_tokens"):
        if getattr(args, name) is not None:
            engine_conf[name] = getattr(args, name)
    tasks = [json.loads(line) for line in open(args.tasks) if line.strip()]
    tok = tokenizers.load(args.tokenizer)
    from a1jax.rollout.engine import make_engine
    from a1jax.train.checkpoint import load_model
    cfg, params = load_model(args.checkpoint)
    eng = make_engine(cfg, params, tok, sampling=sampling_from_args(args, conf.get("sampling")), seed=args.seed,
                      stop=args.stop, **engine_conf)
    loop = Rollout(eng, tok, _env_for, RolloutConfig(**conf.get("rollout", {})))
    start, done, tokens = time.time(), 0, 0
    with open(args.out, "w") as f:
        for rec in loop.run(tasks):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            done += 1
            tokens += sum(rec["loss_mask"])
            el = time.time() - start
            sys.stderr.write(f"\r[{'#' * (30 * done // len(tasks)):<30}] {done}/{len(tasks)} tasks, "
                             f"{tokens} generated tokens, {tokens / max(el, 1e-9):.1f} tok/s, {el:.0f}s")
            sys.stderr.flush()
    sys.stderr.write("\n")
    print(f"wrote {done} records to {args.out}")
    return 0
