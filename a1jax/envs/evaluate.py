"""Evaluation: roll a model out on held-out ("test" split) tasks of each domain, verify every trajectory, report.

    a1jax eval --config EXPERIMENT.py --checkpoint DIR [--domains a,b] [--n N] [--horizons 1,2,4] [--out DIR]

DIR is a converted params directory or a training workdir (as for `a1jax rollout`). The experiment file gives the
tokenizer (config.data.tokenizer) and, optionally, defaults in a `config.envs_eval` section (keys: the long flag
names with underscores: domains, n, horizons, batch_size, max_len, max_new_tokens, max_turns, max_tokens,
task_seed, temperature); flags win. N tasks are drawn per domain and horizon (a domain that has no horizon knob gets
N tasks of its own mix). Output: OUT/eval.json (per domain: success rate, mean reward, mean turns, mean tokens,
success per horizon; and every trajectory's verdict), OUT/trajectories.jsonl, TensorBoard scalars under
OUT/tensorboard (`eval/<domain>/<metric>`), and a table on stdout.

The Agents-A1 web-search sets (BrowseComp, Seal-0, xbench; --web-evals) run through the same loop with the search
domain's tools only when a real search backend is given (--search-url); offline they are reported as skipped with
the reason, never scored. They are evaluation data only. Their answers are graded by normalised exact match, which
is stricter than the LLM judge the upstream benchmarks use.

Trainers call `evaluate(params, model_cfg, ...)` (or `evaluate_engine` with an engine they already hold).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Iterable

from a1jax import storage
from a1jax.envs import registry
from a1jax.envs.base import Session, Task

DEFAULT_HORIZONS = (1, 2, 4, 8)
WEB_EVALS = {"browsecomp": "browsecomp.standardized_data.jsonl",
             "browsecomp_200": "browsecomp_200.standardized_data.jsonl",
             "seal-0": "seal-0.standardized_data.jsonl", "xbench": "xbench.standardized_data.jsonl"}
CONFIG_KEYS = ("domains", "n", "horizons", "batch_size", "max_len", "max_new_tokens", "max_turns", "max_tokens",
               "task_seed", "temperature", "thinking")
THINKING = {"on": True, "off": False, "model": "model"}  # --thinking -> RolloutConfig.enable_thinking


def eval_tasks(env, *, n: int, horizons: Iterable[int], seed: int = 0, split: str = "test") -> list[Task]:
    """`n` tasks per horizon; horizons outside the domain's range are left out, and a domain that accepts none of
    them (or has no horizon knob) gets `n` tasks of its own mix."""
    tasks, ok = [], False
    for h in horizons:
        try:
            tasks += list(env.tasks(split, seed, n=n, horizon=h))
            ok = True
        except ValueError:  # this horizon is out of the domain's range (or the domain has no knob)
            continue
    return tasks if ok else list(env.tasks(split, seed, n=n, horizon=None))


def web_tasks(name: str, path: str, n: int, tools: list) -> list[Task]:
    """The first `n` questions of an Agents-A1 web-search set as search-domain tasks."""
    from a1jax.envs.search import SYSTEM
    tasks = []
    with storage.open(path) as f:
        for line_no, line in enumerate(f, 1):
            if len(tasks) >= n:
                break
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or "question" not in row or "answer" not in row:
                raise ValueError(f"{path}:{line_no}: expected fields 'question' and 'answer'")
            tasks.append(Task(id=f"{name}/{row.get('task_id', line_no)}", domain="search", tools=tools, horizon=0,
                              messages=[{"role": "system", "content": SYSTEM.replace("the knowledge base", "the web")},
                                        {"role": "user", "content": row["question"]}],
                              answer=str(row["answer"]), metadata={"benchmark": name}))
    return tasks


def unique_keys(tasks: list[Task]) -> list[str]:
    """Task ids, with "#2", "#3", ... added to repeats (a domain whose ids omit the horizon repeats them across
    horizons), so every rollout record maps back to its task."""
    seen: dict[str, int] = {}
    keys = []
    for t in tasks:
        seen[t.id] = seen.get(t.id, 0) + 1
        keys.append(t.id if seen[t.id] == 1 else f"{t.id}#{seen[t.id]}")
    return keys


def score(pairs: Iterable[tuple], envs: dict) -> list[dict]:
    """One row per (task, trajectory): the domain's verdict plus turns and tokens."""
    rows = []
    for task, record in pairs:
        verdict = envs[task.id].verify(task, record)
        turns = record.get("turns")
        rows.append({"task_id": record.get("id", task.id), "domain": task.metadata.get("benchmark", task.domain),
                     "horizon": task.horizon, "reward": float(verdict.reward), "success": bool(verdict.success),
                     "reason": verdict.reason,
                     "turns": len(turns) if turns is not None else sum(m["role"] == "assistant"
                                                                      for m in record["messages"]),
                     "tokens": len(record.get("token_ids") or ()),
                     "generated_tokens": sum(record.get("loss_mask") or ()),
                     "termination": record.get("termination")})
    return rows


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def summarize(rows: list[dict]) -> dict:
    """Per domain: n, success_rate, mean_reward, mean_turns (model calls), mean_tokens (whole trajectory: prompt,
    tool results and model output), mean_generated_tokens, and by_horizon {h: {n, success_rate, mean_reward}}."""
    out = {}
    for domain in sorted({r["domain"] for r in rows}):
        mine = [r for r in rows if r["domain"] == domain]
        by_h = {}
        for h in sorted({r["horizon"] for r in mine}):
            at = [r for r in mine if r["horizon"] == h]
            by_h[str(h)] = {"n": len(at), "success_rate": _mean(r["success"] for r in at),
                            "mean_reward": _mean(r["reward"] for r in at)}
        out[domain] = {"n": len(mine), "success_rate": _mean(r["success"] for r in mine),
                       "mean_reward": _mean(r["reward"] for r in mine),
                       "mean_turns": _mean(r["turns"] for r in mine), "mean_tokens": _mean(r["tokens"] for r in mine),
                       "mean_generated_tokens": _mean(r.get("generated_tokens", 0) for r in mine), "by_horizon": by_h}
    return out


def collect_tasks(domains, *, n, horizons, seed, env_options=None, web_evals=(), web_dir=None, search_backend=None):
    """(tasks, {task id: env}, {domain: reason}) for the domains that load; the others are skipped with a reason."""
    tasks, envs, skipped = [], {}, {}
    for d in domains:
        try:
            env = registry.get(d, **(env_options or {}).get(d, {}))
            mine = eval_tasks(env, n=n, horizons=horizons, seed=seed)
        except (ValueError, RuntimeError) as e:
            skipped[d] = str(e)
            continue
        tasks += mine
        envs.update({t.id: env for t in mine})
    for name in web_evals:
        if name not in WEB_EVALS:
            raise ValueError(f"--web-evals: unknown set {name!r}; known: {', '.join(WEB_EVALS)}")
        path = os.path.join(web_dir or "", WEB_EVALS[name])
        if search_backend is None:
            skipped[name] = "needs a real web search backend (--search-url); offline it is not scored"
        elif not web_dir or not storage.isfile(path):
            skipped[name] = f"data file not found: {path!r} (pass --web-dir)"
        else:
            env = registry.get("search", backend=search_backend)
            schemas = [t.schema() for t in env.tools_for(None).values()]
            mine = web_tasks(name, path, n, schemas)
            tasks += mine
            envs.update({t.id: env for t in mine})
    return tasks, envs, skipped


def evaluate_engine(engine, tokenizer, *, domains=None, n: int = 8, horizons=DEFAULT_HORIZONS, seed: int = 0,
                    rollout_cfg=None, env_options=None, web_evals=(), web_dir=None, search_backend=None,
                    out_dir: str | None = None, writer=None, step: int = 0) -> dict:
    """Rolls out `engine` (a1jax.rollout.Engine or anything with its row interface) on the test tasks; returns
    {"domains": summarize(...), "skipped": {...}, "trajectories": rows, "wall_s"}; writes files if out_dir."""
    from a1jax.rollout.agent import Rollout, RolloutConfig
    start = time.time()
    domains = registry.names() if domains is None else list(domains)
    tasks, envs, skipped = collect_tasks(domains, n=n, horizons=horizons, seed=seed, env_options=env_options,
                                         web_evals=web_evals, web_dir=web_dir, search_backend=search_backend)
    by_key = dict(zip(unique_keys(tasks), tasks))
    loop = Rollout(engine, tokenizer, lambda rec: Session(envs[by_key[rec["id"]].id], by_key[rec["id"]]),
                   rollout_cfg or RolloutConfig())
    records = {r["id"]: r for r in loop.run({**t.prompt_record(), "id": k} for k, t in by_key.items())}
    rows = score(((t, records[k]) for k, t in by_key.items()), envs)
    result = {"step": step, "split": "test", "seed": seed, "n": n, "horizons": list(horizons),
              "domains": summarize(rows), "skipped": skipped, "trajectories": rows, "wall_s": time.time() - start}
    if out_dir:
        write(result, records.values(), out_dir, writer=writer, step=step)
    elif writer is not None:
        writer.scalars(step, scalars(result))
    return result


def evaluate(params, model_cfg, *, tokenizer: str = "qwen3_5", sampling=None, batch_size: int = 8,
             max_len: int = 32768, max_new_tokens: int = 4096, sample_seed: int = 0, **kwargs) -> dict:
    """`evaluate_engine` with a fresh engine over `params` (what a trainer calls every so many steps)."""
    from a1jax.data import tokenizers
    from a1jax.rollout.engine import make_engine
    from a1jax.rollout.sampling import SamplingParams
    tok = tokenizers.load(tokenizer) if isinstance(tokenizer, str) else tokenizer
    engine = make_engine(model_cfg, params, tok, sampling=sampling or SamplingParams(), batch_size=batch_size,
                         max_len=max_len, max_new_tokens=max_new_tokens, seed=sample_seed)
    return evaluate_engine(engine, tok, **kwargs)


def scalars(result: dict) -> dict[str, float]:
    out = {}
    for d, s in result["domains"].items():
        for k in ("success_rate", "mean_reward", "mean_turns", "mean_tokens"):
            out[f"eval/{d}/{k}"] = s[k]
        for h, hs in s["by_horizon"].items():
            out[f"eval/{d}/success_h{h}"] = hs["success_rate"]
    return out


def write(result: dict, records: Iterable[dict], out_dir: str, *, writer=None, step: int = 0) -> None:
    from a1jax.train.metrics import MetricWriter
    storage.makedirs(out_dir)
    storage.write_atomic(os.path.join(out_dir, "eval.json"), json.dumps(result, indent=1))
    with storage.open(os.path.join(out_dir, "trajectories.jsonl"), "w") as f:  # an object appears on close
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    own = writer is None
    writer = writer or MetricWriter(out_dir)
    writer.scalars(step, scalars(result))
    if own:
        writer.close()


def table(result: dict) -> str:
    lines = [f"{'domain':<22}{'n':>5}{'success':>9}{'reward':>8}{'turns':>7}{'tokens':>9}  success by horizon"]
    for d, s in result["domains"].items():
        by_h = "  ".join(f"h{h}:{v['success_rate']:.2f}" for h, v in s["by_horizon"].items())
        lines.append(f"{d:<22}{s['n']:>5}{s['success_rate']:>9.3f}{s['mean_reward']:>8.3f}{s['mean_turns']:>7.1f}"
                     f"{s['mean_tokens']:>9.0f}  {by_h}")
    lines += [f"{d:<22} skipped: {why}" for d, why in result["skipped"].items()]
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------------------------

def add_parser(sub) -> None:
    from a1jax.rollout.cli import add_sampling_args
    p = sub.add_parser("eval", help="evaluate a checkpoint on held-out environment tasks",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, metavar="EXPERIMENT.py", help="experiment file (tokenizer, defaults)")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="converted params dir or training workdir")
    p.add_argument("--domains", default=None, help="comma-separated domain names (default: all)")
    p.add_argument("--n", type=int, default=None, help="tasks per domain and horizon (default 8)")
    p.add_argument("--horizons", default=None, help="comma-separated horizons (default 1,2,4,8)")
    p.add_argument("--task-seed", type=int, default=None, help="seed of the test tasks (default 0)")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default CHECKPOINT/eval)")
    p.add_argument("--batch-size", type=int, default=None, help="rows decoded together (default 8)")
    p.add_argument("--max-len", type=int, default=None, help="cache slots shared by the batch (default 32768)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="per model call (default 4096)")
    p.add_argument("--max-turns", type=int, default=None, help="model calls per trajectory (default 100)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per trajectory (default 131072)")
    p.add_argument("--web-evals", default="", help=f"comma-separated Agents-A1 sets: {', '.join(WEB_EVALS)}")
    p.add_argument("--web-dir", default=None, help="folder holding the Agents-A1 *.standardized_data.jsonl files")
    p.add_argument("--search-url", default=None, help="HTTP search service for --web-evals (see search.py)")
    p.add_argument("--tokenizer", default=None, help="overrides config.data.tokenizer")
    p.add_argument("--thinking", default=None, metavar="{on,off,model}",
                   help="generation prompt: on = the template's '<think>\\n' (default), off = an empty think block, "
                        "model = the model opens its own (what a1jax-trained models saw in training)")
    add_sampling_args(p)
    p.set_defaults(func=run)


def _csv(text, flag, cast=str) -> list:
    try:
        items = [cast(x.strip()) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag}={text!r}: expected a comma-separated list of {cast.__name__}") from None
    if not items:
        raise ValueError(f"{flag}={text!r}: expected at least one value")
    return items


def settings(args, config) -> dict:
    """Flags over config.envs_eval over defaults, validated up front."""
    conf = dict(config.get("envs_eval", {}) or {})
    unknown = sorted(set(conf) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"config.envs_eval: unknown key(s) {unknown}; allowed: {list(CONFIG_KEYS)}")
    s = {"domains": registry.names(), "n": 8, "horizons": list(DEFAULT_HORIZONS), "batch_size": 8, "max_len": 32768,
         "max_new_tokens": 4096, "max_turns": 100, "max_tokens": 131072, "task_seed": 0, "thinking": "on", **conf}
    for key in CONFIG_KEYS:
        if getattr(args, key, None) is not None:
            s[key] = getattr(args, key)
    if isinstance(s["domains"], str):
        s["domains"] = _csv(s["domains"], "--domains")
    if isinstance(s["horizons"], str):
        s["horizons"] = _csv(s["horizons"], "--horizons", int)
    bad = [d for d in s["domains"] if d not in registry.names()]
    if bad:
        raise ValueError(f"--domains: unknown domain(s) {bad}; known: {', '.join(registry.names())}")
    for key in ("n", "batch_size", "max_len", "max_new_tokens", "max_turns", "max_tokens"):
        if not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')}={s[key]!r}: expected a positive integer")
    if s["thinking"] not in THINKING:
        raise ValueError(f"--thinking={s['thinking']!r}: expected one of {sorted(THINKING)}")
    if any(h < 1 for h in s["horizons"]):
        raise ValueError(f"--horizons={s['horizons']}: expected positive integers")
    return s


def run(args) -> int:
    from a1jax.data import tokenizers
    from a1jax.rollout.agent import RolloutConfig
    from a1jax.rollout.cli import sampling_from_args
    from a1jax.rollout.engine import make_engine
    from a1jax.train.checkpoint import load_model
    from a1jax.train import experiment
    config = experiment.load(args.config)
    s = settings(args, config)
    web = _csv(args.web_evals, "--web-evals") if args.web_evals else []
    if set(web) - set(WEB_EVALS):
        raise ValueError(f"--web-evals: unknown set(s) {sorted(set(web) - set(WEB_EVALS))}; known: "
                         f"{', '.join(WEB_EVALS)}")
    backend = None
    if args.search_url:
        from a1jax.envs.search import HttpSearchBackend
        backend = HttpSearchBackend(args.search_url)
    tok = tokenizers.load(args.tokenizer or config.get("data", {}).get("tokenizer", "qwen3_5"))
    cfg, params = load_model(args.checkpoint)
    base = {"temperature": s["temperature"]} if "temperature" in s else None
    engine = make_engine(cfg, params, tok, sampling=sampling_from_args(args, base), seed=args.seed, stop=args.stop,
                         batch_size=s["batch_size"], max_len=s["max_len"], max_new_tokens=s["max_new_tokens"])
    out = args.out or os.path.join(args.checkpoint, "eval")
    result = evaluate_engine(engine, tok, domains=s["domains"], n=s["n"], horizons=s["horizons"], seed=s["task_seed"],
                             rollout_cfg=RolloutConfig(max_turns=s["max_turns"], max_tokens=s["max_tokens"],
                                                       enable_thinking=THINKING[s["thinking"]]),
                             web_evals=web, web_dir=args.web_dir, search_backend=backend, out_dir=out)
    print(table(result))
    print(f"wrote {out}/eval.json, {out}/trajectories.jsonl and TensorBoard scalars ({result['wall_s']:.0f}s)",
          file=sys.stderr)
    return 0
