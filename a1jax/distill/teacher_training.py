"""Stage 2, the batch sources that make one domain's teacher from the stage-1 checkpoint (config.envs.domains = [d]).

"teacher_sft" (expert iteration / rejection-sampled SFT): every `expert_iteration.rollout_every` steps the current
model rolls out `envs.tasks_per_domain` train tasks; the trajectories the domain's verifier accepts become training
rows (loss on the model's own tokens), at most `rollout_fraction` of the batch; the other rows are the domain's
expert demonstrations (`env.solve` on train tasks, tokenized with the chat template and its loss masks). Step:
`teacher_sft_step` (the stage-1 objective).

"grpo": each step rolls out `rollout.group_size` samples of each of `envs.tasks_per_domain` tasks; rewards from
`verify`; advantages normalised within each task's group and broadcast to the model-generated tokens (tool outputs
and prompts stay in the context, masked); one trajectory per row; `grpo_step` (PPO-clipped or truncated-IS ratios
against the behaviour log-probs, a1jax/distill/steps.py).

Both (`ExpertIterationSource`, `GRPOSource`) feed the one training loop (a1jax/train/loop.py).

    a1jax train --config experiments/agents_a1_teacher.py:tiny,domain=search --workdir DIR
"""
from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from a1jax.data.chat import tokenize_trajectory
from a1jax.distill import rollouts as R
from a1jax.distill.runner import RolloutSource

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


class ExpertIterationSource(RolloutSource):
    """teacher_sft: each step's rows are accepted rollouts of the last round and the domain's demonstrations."""

    def __init__(self, run):
        super().__init__(run)
        s, B = self.settings, self.exp.data.batch_size
        (self.domain,) = s.envs.domains
        self.n_roll_rows = int(s.expert_iteration.rollout_fraction * B)
        # the accepted rollouts of a round are not in the checkpoint: SIGTERM stops at a round's start
        self.boundary = s.expert_iteration.rollout_every if self.n_roll_rows else 1
        self.env = R.make_envs(s)[self.domain]
        self.demos = demonstration_pieces(self.env, self.domain, self.tok, n=s.expert_iteration.demos,
                                          horizons=s.envs.horizons_of(self.domain),
                                          seed=R.step_seed(s.envs.task_seed, 0, 104729))
        self.engine = R.make_engine(self.exp.model, self.engine_params(), self.tok, s.rollout)
        self.accepted, self.round_scalars = None, {}

    def next(self, step: int):
        self.t0 = time.perf_counter()
        s, d, B, T = self.settings, self.domain, self.exp.data.batch_size, self.exp.data.seq_len
        if self.n_roll_rows == 0:  # plain SFT on the domain's demonstrations: nothing to roll out
            self.accepted = []
        elif self.accepted is None or step % s.expert_iteration.rollout_every == 0:
            tasks = R.draw_tasks(self.env, d, n=s.envs.tasks_of(d), horizons=s.envs.horizons_of(d),
                                 seed=R.step_seed(s.envs.task_seed, step))
            trajs = R.roll_out(self.engine, self.tok, [(t, self.env) for t in tasks], s.rollout,
                               seed=R.step_seed(self.exp.config.seed, step, 7919), domain_ids={d: 0})
            self.accepted = [R.rollout_piece(t) for t in trajs if t.success]  # the verifier's filter
            self.round_scalars = rollout_scalars(f"rollout/{d}", trajs)
            self.round_scalars[f"rollout/{d}/accepted"] = float(len(self.accepted))
        self.rows_r = min(self.n_roll_rows, len(self.accepted))  # never more rows than accepted trajectories
        pad = self.tok.pad_id
        start = (step * B) % max(len(self.demos), 1)
        parts = [R.pack(self.accepted, rows=self.rows_r, seq_len=T, pad_id=pad).batch] if self.rows_r else []
        parts.append(R.pack(self.demos[start:] + self.demos[:start], rows=B - self.rows_r, seq_len=T,
                            pad_id=pad).batch)
        self.batch = {k: np.concatenate([p[k] for p in parts]) for k in PIPELINE_KEYS}
        return (self.batch,)

    def record(self, step: int, metrics: dict) -> dict:
        m = jax.device_get(metrics)
        return self.timed({"train/loss": float(m["loss"]), "train/grad_norm": float(m["grad_norm"]),
                           "train/learning_rate": float(m["learning_rate"]),
                           "train/rollout_rows": float(self.rows_r), **self.round_scalars}, self.batch)

    def note(self, scalars: dict) -> str:
        d, r = self.domain, self.round_scalars
        return (f"{d}: last rollout round: success {r[f'rollout/{d}/success']:.2f}, "
                f"{int(r[f'rollout/{d}/accepted'])} accepted" if r else "")


class GRPOSource(RolloutSource):
    """grpo: each step rolls out group_size samples of each task; one trajectory per row with its advantage."""

    def __init__(self, run):
        super().__init__(run)
        (self.domain,) = self.settings.envs.domains
        self.env = R.make_envs(self.settings)[self.domain]
        self.engine = R.make_engine(self.exp.model, self.engine_params(), self.tok, self.settings.rollout)

    def next(self, step: int):
        self.t0 = time.perf_counter()
        s, d, G = self.settings, self.domain, self.settings.rollout.group_size
        tasks = R.draw_tasks(self.env, d, n=s.envs.tasks_of(d), horizons=s.envs.horizons_of(d),
                             seed=R.step_seed(s.envs.task_seed, step))
        items = [(dataclasses.replace(t, id=f"{t.id}#g{j}"), self.env) for t in tasks for j in range(G)]
        self.trajs = R.roll_out(self.engine, self.tok, items, s.rollout,
                                seed=R.step_seed(self.exp.config.seed, step, 7919), domain_ids={d: 0})
        self.adv = R.group_advantages([t.reward for t in self.trajs], G)
        self.packed = R.pack([R.rollout_piece(t, advantage=a) for t, a in zip(self.trajs, self.adv)],
                             rows=self.exp.data.batch_size, seq_len=self.exp.data.seq_len, pad_id=self.tok.pad_id,
                             one_per_row=True)
        return (self.packed.batch,)

    def record(self, step: int, metrics: dict) -> dict:
        m, d, G = jax.device_get(metrics), self.domain, self.settings.rollout.group_size
        return self.timed({
            "train/loss": float(m["loss"]), "train/grad_norm": float(m["grad_norm"]),
            "train/learning_rate": float(m["learning_rate"]),
            f"clip_frac/{d}": float(m["clip_frac"]), f"kl_behavior/{d}": float(m["kl_behavior"]),
            f"kl_ref/{d}": float(m["kl_ref"]), f"entropy/{d}": float(m["entropy"]),
            f"response_length/{d}": float(m["response_length"]),
            "rollout/dropped": float(self.packed.dropped), "rollout/truncated": float(self.packed.truncated),
            "train/zero_advantage_groups": float(np.sum(np.abs(self.adv.reshape(-1, G)).max(1) == 0)),
            **rollout_scalars(f"rollout/{d}", self.trajs)}, self.packed.batch)

    def note(self, scalars: dict) -> str:
        d = self.domain
        return (f"{d}: reward {scalars[f'rollout/{d}/reward']:.3f} success {scalars[f'rollout/{d}/success']:.2f} "
                f"clip {scalars[f'clip_frac/{d}']:.3f}")
