"""Stage 2, the impure loops that make one domain's teacher from the stage-1 checkpoint (config.envs.domains = [d]).

"teacher_sft" (expert iteration / rejection-sampled SFT): every `expert_iteration.rollout_every` steps the current
model rolls out `envs.tasks_per_domain` train tasks; the trajectories the domain's verifier accepts become training
rows (loss on the model's own tokens), at most `rollout_fraction` of the batch; the other rows are the domain's
expert demonstrations (`env.solve` on train tasks, tokenized with the chat template and its loss masks). Step:
`teacher_sft_step` (the stage-1 objective).

"grpo": each step rolls out `rollout.group_size` samples of each of `envs.tasks_per_domain` tasks; rewards from
`verify`; advantages normalised within each task's group and broadcast to the model-generated tokens (tool outputs
and prompts stay in the context, masked); one trajectory per row; `grpo_step` (PPO-clipped or truncated-IS ratios
against the behaviour log-probs, a1jax/distill/steps.py).

    a1jax train --config experiments/agents_a1_teacher.py:tiny,domain=search --workdir DIR
"""
from __future__ import annotations

import dataclasses
import logging
import time

import jax
import numpy as np

from a1jax.data.chat import tokenize_trajectory
from a1jax.distill import rollouts as R
from a1jax.distill.runner import StageRun
from a1jax.train.experiment import Experiment

log = logging.getLogger("a1jax.distill")
PIPELINE_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions", "domain_ids")


def demonstration_pieces(env, domain: str, tok, *, n: int, horizons, seed: int, domain_id: int = 0) -> list[dict]:
    """`n` expert demonstrations of the domain's train tasks, as packing pieces (template loss masks)."""
    pieces = []
    for task in R.draw_tasks(env, domain, n=n, horizons=horizons, seed=seed):
        pieces.append(R.demo_piece(tokenize_trajectory(env.solve(task), tok), domain_id))
    return pieces


def rollout_scalars(prefix: str, trajs) -> dict[str, float]:
    """reward, success and response length (generated tokens) of a set of rollouts."""
    n = max(len(trajs), 1)
    return {f"{prefix}/reward": sum(t.reward for t in trajs) / n,
            f"{prefix}/success": sum(t.success for t in trajs) / n,
            f"{prefix}/response_length": sum(sum(t.record["loss_mask"]) for t in trajs) / n,
            f"{prefix}/turns": sum(len(t.record["turns"]) for t in trajs) / n}


def _log(run: StageRun, scalars: dict, loss: float, tokens: float, seconds: float, extra: str = ""):
    scalars["perf/tokens_per_s"] = tokens / max(seconds, 1e-9)
    run.writer.scalars(run.step, scalars)
    if run.step % run.exp.config.train.log_every == 0 or run.step == int(run.exp.config.train.steps):
        run.progress.print(run.step, loss, scalars["perf/tokens_per_s"])
        if extra:
            print(f"    {extra}", flush=True)


def _concat(a: dict, b: dict) -> dict:
    return {k: np.concatenate([a[k], b[k]]) for k in a if k in b}


def run_teacher_sft(exp: Experiment, workdir: str, *, init_from: str = "", devices=None,
                    allow_fresh_start: bool = False) -> list[dict]:
    """Expert iteration for one domain; returns the scalars of the steps it ran."""
    run = StageRun(exp, workdir, init_from=init_from, devices=devices, allow_fresh_start=allow_fresh_start)
    config, s = exp.config, exp.loop
    (domain,) = s.envs.domains
    B, T = exp.data.batch_size, exp.data.seq_len
    n_roll_rows = int(s.expert_iteration.rollout_fraction * B)
    accepted, round_scalars, history = None, {}, []
    total = int(config.train.steps)
    try:
        env = R.make_envs(s)[domain]
        demos = demonstration_pieces(env, domain, run.tok, n=s.expert_iteration.demos, horizons=s.envs.horizons_of(domain),
                                     seed=R.step_seed(s.envs.task_seed, 0, 104729))
        engine = R.make_engine(exp.model, run.engine_params(), run.tok, s.rollout)
        # the accepted rollouts of a round are not in the checkpoint: SIGTERM stops at a round's start
        while run.keep_going(total, s.expert_iteration.rollout_every if n_roll_rows else 1):
            t0 = time.perf_counter()
            if n_roll_rows == 0:  # plain SFT on the domain's demonstrations: nothing to roll out
                accepted = []
            elif accepted is None or run.step % s.expert_iteration.rollout_every == 0:
                tasks = R.draw_tasks(env, domain, n=s.envs.tasks_per_domain, horizons=s.envs.horizons_of(domain),
                                     seed=R.step_seed(s.envs.task_seed, run.step))
                trajs = R.roll_out(engine, run.tok, [(t, env) for t in tasks], s.rollout,
                                   seed=R.step_seed(config.seed, run.step, 7919), domain_ids={domain: 0})
                accepted = [R.rollout_piece(t) for t in trajs if t.success]  # the verifier's filter
                round_scalars = rollout_scalars(f"rollout/{domain}", trajs)
                round_scalars[f"rollout/{domain}/accepted"] = float(len(accepted))
            rows_r = min(n_roll_rows, len(accepted))  # never more rows than accepted trajectories
            rolled = R.pack(accepted, rows=rows_r, seq_len=T, pad_id=run.tok.pad_id).batch if rows_r else None
            start = (run.step * B) % max(len(demos), 1)
            order = demos[start:] + demos[:start]
            demo_batch = R.pack(order, rows=B - rows_r, seq_len=T, pad_id=run.tok.pad_id).batch
            batch = _concat(rolled, demo_batch) if rolled is not None else demo_batch
            batch = {k: batch[k] for k in PIPELINE_KEYS}
            run.state, m = run.step_fn(run.state, batch)
            m = jax.device_get(m)
            engine.params = run.engine_params()
            run.step += 1
            scalars = {"train/loss": float(m["loss"]), "train/grad_norm": float(m["grad_norm"]),
                       "train/learning_rate": float(m["learning_rate"]), "train/rollout_rows": float(rows_r),
                       **round_scalars}
            tokens = float(np.sum(batch["segment_ids"] > 0))
            _log(run, scalars, scalars["train/loss"], tokens, time.perf_counter() - t0,
                 f"{domain}: last rollout round: success {round_scalars[f'rollout/{domain}/success']:.2f}, "
                 f"{int(round_scalars[f'rollout/{domain}/accepted'])} accepted" if round_scalars else "")
            history.append({"step": run.step, **scalars})
            run.after_step()
        run.finish(run.step)
    finally:
        run.close()
    return history


def run_grpo(exp: Experiment, workdir: str, *, init_from: str = "", devices=None,
             allow_fresh_start: bool = False) -> list[dict]:
    """GRPO for one domain; returns the scalars of the steps it ran."""
    run = StageRun(exp, workdir, init_from=init_from, devices=devices, allow_fresh_start=allow_fresh_start)
    config, s = exp.config, exp.loop
    (domain,) = s.envs.domains
    G, B, T = s.rollout.group_size, exp.data.batch_size, exp.data.seq_len
    total, history = int(config.train.steps), []
    try:
        env = R.make_envs(s)[domain]
        engine = R.make_engine(exp.model, run.engine_params(), run.tok, s.rollout)
        while run.keep_going(total):
            t0 = time.perf_counter()
            tasks = R.draw_tasks(env, domain, n=s.envs.tasks_per_domain, horizons=s.envs.horizons_of(domain),
                                 seed=R.step_seed(s.envs.task_seed, run.step))
            items = [(dataclasses.replace(t, id=f"{t.id}#g{j}"), env) for t in tasks for j in range(G)]
            trajs = R.roll_out(engine, run.tok, items, s.rollout, seed=R.step_seed(config.seed, run.step, 7919),
                               domain_ids={domain: 0})
            adv = R.group_advantages([t.reward for t in trajs], G)
            packed = R.pack([R.rollout_piece(t, advantage=a) for t, a in zip(trajs, adv)], rows=B, seq_len=T,
                            pad_id=run.tok.pad_id, one_per_row=True)
            run.state, m = run.step_fn(run.state, packed.batch)
            m = jax.device_get(m)
            engine.params = run.engine_params()
            run.step += 1
            scalars = {"train/loss": float(m["loss"]), "train/grad_norm": float(m["grad_norm"]),
                       "train/learning_rate": float(m["learning_rate"]),
                       f"clip_frac/{domain}": float(m["clip_frac"]), f"kl_behavior/{domain}": float(m["kl_behavior"]),
                       f"kl_ref/{domain}": float(m["kl_ref"]), f"entropy/{domain}": float(m["entropy"]),
                       f"response_length/{domain}": float(m["response_length"]),
                       "rollout/dropped": float(packed.dropped), "rollout/truncated": float(packed.truncated),
                       "train/zero_advantage_groups": float(np.sum(np.abs(adv.reshape(-1, G)).max(1) == 0)),
                       **rollout_scalars(f"rollout/{domain}", trajs)}
            history.append({"step": run.step, **scalars})
            _log(run, scalars, scalars["train/loss"], float(np.sum(packed.batch["segment_ids"] > 0)),
                 time.perf_counter() - t0, f"{domain}: reward {scalars[f'rollout/{domain}/reward']:.3f} "
                                           f"success {scalars[f'rollout/{domain}/success']:.2f} "
                                           f"clip {scalars[f'clip_frac/{domain}']:.3f}")
            run.after_step()
        run.finish(run.step)
    finally:
        run.close()
    return history


def run_stage(exp: Experiment, workdir: str, *, init_from: str = "", devices=None,
              allow_fresh_start: bool = False) -> list[dict]:
    """Dispatch on config.stage for the rollout stages (`a1jax train` calls this)."""
    from a1jax.distill.opd import run_opd
    loops = {"teacher_sft": run_teacher_sft, "grpo": run_grpo, "opd": run_opd}
    return loops[exp.config.stage](exp, workdir, init_from=init_from, devices=devices,
                                   allow_fresh_start=allow_fresh_start)
