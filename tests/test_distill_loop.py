"""The stage-2/3 outer loops: OPD end to end on the real environments and tokenizer with a toy student and two toy
teachers (KL falls, metrics written, resume is exact), domain routing per row, failing teachers counted, expert
iteration keeps only verified trajectories, and the GRPO loop logs its metrics. Every rollout stage runs the one
training loop: it resumes after SIGTERM and after SIGKILL (of a process of its own) at random steps with the
uninterrupted run's losses, bit for bit, and stops at the K-th skipped update in a row."""
import dataclasses
import functools
import json
import logging
import os
import random
import signal
import sys

import jax
import ml_collections
import numpy as np
import pytest

from a1jax import model as M, stages
from a1jax.data.chat import tokenize_trajectory
from a1jax.data.tokenizers import load
from a1jax.distill import opd, rollouts as R
from a1jax.distill import teachers as teacher_lib
from a1jax.distill.opd import run_opd
from a1jax.distill.teachers import score as full_score
from a1jax.envs import registry
from a1jax.train import experiment, loop

DOMAINS = ["search", "scientific_agents"]
MODEL = dict(vocab_size=248320, hidden_size=16, num_hidden_layers=2, linear_key_head_dim=8, linear_value_head_dim=8,
             head_dim=8, moe_intermediate_size=16, shared_expert_intermediate_size=16, loss_chunk_size=128,
             deltanet_chunk_size=64, max_position_embeddings=8192)
ONE = jax.devices()[:1]


def _config(stage="opd", steps=3, domains=DOMAINS, init_from="", fixed_tasks=False, **rollout):
    c = ml_collections.ConfigDict()
    c.stage, c.seed, c.init_from = stage, 0, init_from
    c.model = ml_collections.ConfigDict(dict(preset="tiny", overrides=dict(MODEL)))
    c.data = ml_collections.ConfigDict(dict(tokenizer="qwen3_5", seq_len=1024, batch_size=2 * len(domains)))
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, expert=1, tensor=1, sequence=1))
    c.envs = ml_collections.ConfigDict(dict(domains=list(domains), horizons=[1], tasks_per_domain=2, task_seed=0,
                                            fixed_tasks=fixed_tasks))
    c.rollout = ml_collections.ConfigDict(dict(dict(batch_size=4, max_len=4096, max_new_tokens=16, max_turns=2,
                                                    max_tokens=1000, group_size=2), **rollout))
    c.distill = ml_collections.ConfigDict(dict(estimator="salient", norm="domain"))
    c.optimizer = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=0, schedule="constant",
                                                 min_lr_ratio=1.0, weight_decay=0.0, b1=0.9, b2=0.95, eps=1e-8,
                                                 clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(steps=steps, microbatches=1, log_every=1, z_loss_coef=0.0,
                                             mtp_loss_coef=0.0, max_consecutive_skips=5))
    c.checkpoint = ml_collections.ConfigDict(dict(every=1, keep=3, async_save=False))
    c.expert_iteration = ml_collections.ConfigDict(dict(rollout_every=1, rollout_fraction=0.5, demos=4))
    c.teachers = [dict(domain=d, workdir=f"/unused/{d}", k=8) for d in domains]  # tests pass teacher objects
    return c


def _teacher(seed, logit_scale=1.0):
    """A random tiny model made confident (LM head rescaled to std `logit_scale`), so the student has something to
    learn."""
    cfg = M.presets.tiny(**MODEL)
    params = M.init(cfg, jax.random.PRNGKey(seed), include_mtp=False)
    w = params["lm_head"].value
    params["lm_head"] = M.Param(w * (logit_scale / w.std()), params["lm_head"].axes)
    teacher = teacher_lib.LocalTeacher(f"toy-{seed}", k=8, chunk=128, params=params, cfg=cfg)
    teacher.params_boxed = params
    return teacher


def _perturbed(params, seed, std):
    w = params["lm_head"]
    noise = std * jax.random.normal(jax.random.PRNGKey(seed), w.value.shape)
    return {**params, "lm_head": M.Param(w.value + noise, w.axes)}


def _teachers():
    """The two toy teachers, one per domain of DOMAINS (a process of its own makes the very same ones)."""
    return {"search": _teacher(1), "scientific_agents": _teacher(2)}


@pytest.fixture(scope="module")
def teachers():
    return _teachers()


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow  # 6 OPD steps with rollouts on the 248K vocabulary: ~80 s of CPU
def test_opd_loop_lowers_the_per_domain_kl_writes_metrics_and_resumes_exactly(tmp_path, monkeypatch):
    # Teachers: one confident random model, and a perturbed copy of it; the student starts from another perturbed
    # copy (init_from), so the distance to each teacher is moderate and the KL gradient points straight back. All
    # embedding rows are one vector, so every context gives the same hidden state: what a step learns about the LM
    # head holds at the next step's new, randomly sampled contexts, and the on-policy KL can fall within 3 steps.
    cfg = M.presets.tiny(**MODEL)
    base = dict(_teacher(3).params_boxed)
    e = base["embed"]
    base["embed"] = M.Param(jax.numpy.broadcast_to(e.value[:1], e.value.shape) * 1.0, e.axes)
    teachers = {"search": teacher_lib.LocalTeacher("t-search", k=8, chunk=128, params=base, cfg=cfg),
                "scientific_agents": teacher_lib.LocalTeacher("t-sci", k=8, chunk=128,
                                                              params=_perturbed(base, 4, 0.3), cfg=cfg)}
    student = M.unbox(_perturbed(base, 5, 0.6))
    monkeypatch.setattr(loop, "load_init_params", lambda path: (cfg, student))
    exp = stages.validate(_config(steps=3, init_from="perturbed-copy"))
    full = run_opd(exp, str(tmp_path / "a"), devices=ONE, teachers=teachers)
    assert [h["step"] for h in full] == [1, 2, 3]
    rows = _rows(tmp_path / "a")
    assert all(r["rollout/row_len"] in (1024, 512, 256) for r in rows)  # seq_len 1024 or a halving that held them
    for d in DOMAINS:
        assert all(np.isfinite(r[f"kl/{d}"]) for r in rows)
        assert rows[-1][f"kl/{d}"] < rows[0][f"kl/{d}"], [r[f"kl/{d}"] for r in rows]
        assert rows[0][f"teacher_failures/{d}"] == 0 and rows[0][f"tokens/{d}"] > 0
        assert 0 < rows[0][f"is_nonzero_frac/{d}"] <= 1
    # Stop after 2 steps, then resume to 3: the third step is the uninterrupted run's third step.
    config = lambda steps: stages.validate(_config(steps=steps, init_from="perturbed-copy"))
    run_opd(config(2), str(tmp_path / "b"), devices=ONE, teachers=teachers)
    resumed = run_opd(config(3), str(tmp_path / "b"), devices=ONE, teachers=teachers)
    assert [h["step"] for h in resumed] == [3]
    for key in ("train/loss", "kl/search", "kl/scientific_agents", "tokens/search", "reward/scientific_agents"):
        assert resumed[0][key] == pytest.approx(full[2][key], rel=1e-5, abs=1e-7), key


def _batch(tok, domains_per_row):
    """Two demos per row, one domain per row, packed like the stage-3 batch."""
    pieces = []
    for d_id, d in enumerate(DOMAINS):
        env = registry.get(d)
        for task in env.tasks("train", 0, n=2, horizon=1):
            pieces.append(R.demo_piece(tokenize_trajectory(env.solve(task), tok), d_id))
    return R.pack(pieces, rows=len(domains_per_row), seq_len=1024, pad_id=tok.pad_id, row_domains=domains_per_row)


def test_routing_gives_each_row_its_own_domains_teacher_and_matches_the_full_scorer(teachers):
    tok = load("qwen3_5")
    packed = _batch(tok, [0, 1, 0, 1])
    b = packed.batch
    a, s = teachers["search"], teachers["scientific_agents"]
    got, stats = teacher_lib.route({0: a, 1: s}, b, [0, 1, 0, 1], k=8)
    assert stats[0]["failures"] == stats[1]["failures"] == 0
    mask = b["loss_mask"] > 0
    np.testing.assert_array_equal(got["valid"] > 0, mask)
    arrays = {k: b[k] for k in ("tokens", "targets", "positions", "segment_ids")}
    for teacher, rows, other in ((a, [0, 2], s), (s, [1, 3], a)):
        ref = jax.device_get(full_score(teacher.params, teacher.cfg, {k: v[rows] for k, v in arrays.items()},
                                        k=8, chunk=128))
        wrong = jax.device_get(full_score(other.params, other.cfg, {k: v[rows] for k, v in arrays.items()},
                                          k=8, chunk=128))
        m = mask[rows]
        np.testing.assert_allclose(got["sampled_logp"][rows][m], ref["sampled_logp"][m], atol=2e-4)
        np.testing.assert_allclose(got["topk_logp"][rows][m], ref["topk_logp"][m], atol=2e-4)
        assert np.mean(got["topk_ids"][rows][m] == ref["topk_ids"][m]) > 0.99
        assert not np.allclose(got["sampled_logp"][rows][m], wrong["sampled_logp"][m], atol=1e-2)


class Broken:
    k = 8

    def score(self, batch):
        raise ConnectionError("teacher server down")


def test_a_failing_teacher_marks_its_rows_invalid_and_is_counted(teachers):
    tok = load("qwen3_5")
    b = _batch(tok, [0, 1]).batch
    got, stats = teacher_lib.route({0: Broken(), 1: teachers["scientific_agents"]}, b, [0, 1], k=8)
    assert stats[0]["failures"] == 1
    assert stats[0]["invalid_tokens"] == int((b["loss_mask"][0] > 0).sum()) > 0
    assert not got["valid"][0].any()  # never silently zero targets: the rows are invalid
    assert got["valid"][1].sum() == (b["loss_mask"][1] > 0).sum() and stats[1]["failures"] == 0


def test_teacher_sft_trains_on_verified_rollouts_only(tmp_path, monkeypatch):
    from a1jax.distill import teacher_training as T
    tok = load("qwen3_5")
    env = registry.get("scientific_agents")
    good_task, bad_task = env.tasks("train", 5, n=2, horizon=1)

    def fake_rollouts(engine, tok_, items, ro, *, seed, domain_ids):
        out = []
        for task, wrong in ((good_task, False), (bad_task, True)):
            rec = env.solve(task)
            if wrong:
                rec["messages"][-1]["content"] = "Answer: 12345678"
            ex = tokenize_trajectory(rec, tok)
            rec.update(token_ids=ex["tokens"].tolist(), loss_mask=ex["loss_mask"].tolist(),
                       behaviour_logprobs=[0.0] * len(ex["tokens"]), turns=[{}])
            v = env.verify(task, rec)
            out.append(R.Trajectory(task, rec, v.reward, v.success, 0))
        return out

    seen = []
    real_step = loop.Run.step_fn

    def spy(self, state, batch, *rest):
        seen.append({k: np.asarray(v).copy() for k, v in batch.items()})
        return real_step(self, state, batch, *rest)

    monkeypatch.setattr(T.R, "roll_out", fake_rollouts)
    monkeypatch.setattr(loop.Run, "step_fn", spy)
    cfg = _config(stage="teacher_sft", steps=1, domains=["scientific_agents"])
    cfg.data.batch_size = 2  # one row for accepted rollouts (rollout_fraction 0.5), one for demonstrations
    exp = stages.validate(cfg)
    hist = loop.run_stage(exp, str(tmp_path / "t"), devices=ONE).history
    assert hist[0]["rollout/scientific_agents/accepted"] == 1 and hist[0]["rollout/scientific_agents/success"] == 0.5
    rows = [tuple(r[r != tok.pad_id]) for r in seen[0]["tokens"]]
    good_ids = tuple(fake_rollouts(None, tok, None, None, seed=0, domain_ids=None)[0].record["token_ids"])
    bad_ids = tuple(fake_rollouts(None, tok, None, None, seed=0, domain_ids=None)[1].record["token_ids"])
    assert rows[0] == good_ids  # the rollout row holds the verified trajectory ...
    assert all(bad_ids != r[:len(bad_ids)] for r in rows)  # ... and the rejected one is nowhere
    assert seen[0]["loss_mask"][1].sum() > 0  # the other row is demonstrations


def test_grpo_loop_runs_and_logs_per_domain_metrics(tmp_path):
    cfg = _config(stage="grpo", steps=1, domains=["scientific_agents"])
    cfg.envs.tasks_per_domain, cfg.data.batch_size = 1, 2
    cfg.grpo = ml_collections.ConfigDict(dict(loss_type="ppo"))
    hist = loop.run_stage(stages.validate(cfg), str(tmp_path / "g"), devices=ONE).history
    row = _rows(tmp_path / "g")[-1]
    for key in ("clip_frac/scientific_agents", "kl_behavior/scientific_agents", "entropy/scientific_agents",
                "response_length/scientific_agents", "rollout/scientific_agents/reward",
                "rollout/scientific_agents/success"):
        assert key in row and np.isfinite(row[key]), key
    assert row["response_length/scientific_agents"] > 0 and hist[0]["step"] == 1


def test_bad_loop_config_names_the_field():
    for name, value in (("temperature", 1.5), ("temperature", 0.0), ("top_p", 0.9), ("top_k", 20)):
        c = _config()
        c.rollout[name] = value
        with pytest.raises(ValueError, match=r"config.rollout .*temperature"):
            stages.validate(c)
    c = _config()
    c.rollout.temperature = 0.5  # sharpened rollouts; the importance ratio takes the T = 1 log-probs
    stages.validate(c)
    c = _config()
    c.envs.domains = ["search", "nonexistent"]
    with pytest.raises(ValueError, match="config.envs.domains"):
        stages.validate(c)
    c = _config(stage="grpo", domains=["search"])
    c.data.batch_size = 1
    with pytest.raises(ValueError, match="config.data.batch_size"):
        stages.validate(c)
    c = _config(stage="teacher_sft", steps=20, domains=["search"])
    c.expert_iteration.rollout_every, c.checkpoint.every = 10, 15  # a checkpoint inside a rollout round
    with pytest.raises(ValueError, match=r"config.expert_iteration.rollout_every=10: expected a divisor of "
                                         r"config.checkpoint.every=15"):
        stages.validate(c)
    c.expert_iteration.rollout_fraction = 0.0  # plain SFT on demonstrations: no rounds to split
    stages.validate(c)
    for stage in ("opd", "grpo"):  # their losses have no MTP term: a coefficient would be silently ignored
        c = _config(stage=stage, domains=["search"])
        c.model.overrides.mtp_num_hidden_layers, c.train.mtp_loss_coef = 1, 0.1
        with pytest.raises(ValueError, match=rf"config.train.mtp_loss_coef=0.1: expected 0 for stage '{stage}'"):
            stages.validate(c)


class Echo:
    """A teacher that puts all its mass on its own next token (its ids, its vocabulary)."""
    k = 4

    def score_sequences(self, seqs):
        out = []
        for s in seqs:
            n = len(s)
            ids, lp = np.full((n, 4), -1, np.int32), np.full((n, 4), -np.inf, np.float32)
            ids[:-1, 0], lp[:-1, 0] = s[1:], 0.0
            out.append((ids, lp, np.zeros(n, np.float32)))
        return out


def test_a_teacher_with_another_tokenizer_is_aligned_onto_the_students_positions():
    from a1jax.distill.vocab import Aligner
    student = load("qwen3_5")
    b = _batch(student, [0, 1]).batch
    got, _ = teacher_lib.AlignedTeacher(Echo(), Aligner(load("qwen3"), student)).score(b)
    m, v = b["loss_mask"] > 0, got["valid"] > 0
    assert not v[~m].any() and v.sum() > 0.5 * m.sum()
    # Where a position is aligned 1:1, the teacher's next token, mapped into the student's vocabulary, is the
    # student's own target: the projection lands on the position that predicts it.
    assert np.mean(got["topk_ids"][..., 0][v] == b["targets"][v]) > 0.95


def test_report_decodes_with_the_recipes_own_domains_and_rollout_settings(tmp_path):
    from a1jax.distill import report
    with pytest.raises(FileNotFoundError, match="distill/config.json"):
        report.recipe_settings(str(tmp_path))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = experiment.load(os.path.join(repo, "experiments", "agents_a1_distill.py") +
                        ":tiny,domains=instruction_following:tool_calling")
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "config.json").write_text(c.to_json())
    domains, ro = report.recipe_settings(str(tmp_path))
    assert domains == ["instruction_following", "tool_calling"]
    assert ro.enable_thinking == "model" and ro.max_new_tokens == c.rollout.max_new_tokens


def _spied_opd_step(tmp_path, monkeypatch, teachers, policy, **distill):
    """One stage-3 step with config.distill.policy=`policy` (and the config.distill fields `distill`): (every
    roll_out call as (engine, task ids, trajectories), the (batch, teacher targets) the step saw, the history)."""
    calls, seen = [], []
    real_roll, real_step = R.roll_out, loop.Run.step_fn

    def roll_spy(engine, tok, items, ro, *, seed, domain_ids):
        trajs = real_roll(engine, tok, items, ro, seed=seed, domain_ids=domain_ids)
        calls.append((engine, [t.id for t, _ in items], trajs))
        return trajs

    def step_spy(self, state, batch, *rest):
        seen.append(({k: np.asarray(v).copy() for k, v in batch.items()},
                     {k: np.asarray(v).copy() for k, v in rest[0].items()}))
        return real_step(self, state, batch, *rest)

    monkeypatch.setattr(opd.R, "roll_out", roll_spy)
    monkeypatch.setattr(loop.Run, "step_fn", step_spy)
    cfg = _config(steps=1)
    cfg.distill.policy = policy
    for k, v in distill.items():
        cfg.distill[k] = v
    hist = run_opd(stages.validate(cfg), str(tmp_path / policy), devices=ONE, teachers=teachers)
    return calls, seen, hist


def test_off_policy_trains_the_student_on_each_domains_teacher_rollouts_of_the_same_tasks(tmp_path, monkeypatch,
                                                                                          teachers):
    """config.distill.policy='off' (sequence-level KD, benchmarks/ablation.py variant c): each domain's teacher rolls
    out the tasks the student would have drawn, and the step's batch holds exactly the teachers' tokens, with no
    teacher target (the loss is SFT on them)."""
    calls, seen, hist = _spied_opd_step(tmp_path, monkeypatch, teachers, "off")
    assert len(calls) == 2 and len(seen) == 1  # one rollout per domain, one student update
    temperature = stages.validate(_config()).loop.rollout.temperature  # off_temperature -1: as the student samples
    assert all(engine.sampling.temperature == temperature > 0 for engine, _, _ in calls)
    for (engine, ids, _), d in zip(calls, DOMAINS):
        np.testing.assert_array_equal(np.asarray(engine.params["lm_head"]), np.asarray(teachers[d].params["lm_head"]))
        # the tasks the on-policy loop draws at step 0 (opd.step_items: seeded by task_seed, step and domain id)
        want = R.draw_tasks(registry.get(d), d, n=2, horizons=[1], seed=R.step_seed(0, 0, DOMAINS.index(d)))
        assert ids == [t.id for t in want]
    batch, targets = seen[0]
    trajs = [t for _, _, ts in calls for t in ts]
    seg = batch["segment_ids"]
    segments = sorted(tuple(batch["tokens"][i][seg[i] == s]) for i in range(len(seg)) for s in set(seg[i]) - {0})
    assert segments == sorted(tuple(t.record["token_ids"]) for t in trajs)  # the batch is the teachers' rollouts
    assert batch["loss_mask"].sum() == sum(sum(t.record["loss_mask"]) for t in trajs) > 0  # on their own tokens
    assert not targets["valid"].any()  # nothing is scored: the teachers' tokens are the targets
    for d in DOMAINS:
        assert hist[0][f"tokens/{d}"] == sum(sum(t.record["loss_mask"]) for t in trajs if t.task.domain == d) > 0
    assert np.isfinite(hist[0]["train/loss"]) and hist[0]["train/loss"] > 0 and hist[0]["kl/search"] == 0.0


def test_mixed_policy_splits_each_domains_tasks_between_the_student_and_its_teacher(tmp_path, monkeypatch, teachers):
    """config.distill.policy='mix' (GKD's data mix): of each domain's tasks the student rolls out one part and the
    domain's teacher the other (off_share); the batch holds both, the teachers' tokens marked off_policy, and every
    token is scored by its domain's teacher (the targets are valid on both kinds). With off_temperature 0 the
    teachers decode greedily and the student still samples at config.rollout.temperature."""
    calls, seen, hist = _spied_opd_step(tmp_path, monkeypatch, teachers, "mix", off_temperature=0.0)
    assert len(calls) == 3 and len(seen) == 1  # the student once, then each domain's teacher
    student_ids, student = calls[0][1], calls[0][2]
    assert calls[0][0].sampling.temperature == stages.validate(_config()).loop.rollout.temperature > 0
    assert [engine.sampling.temperature for engine, _, _ in calls[1:]] == [0.0, 0.0]
    for (engine, ids, _), d in zip(calls[1:], DOMAINS):
        np.testing.assert_array_equal(np.asarray(engine.params["lm_head"]), np.asarray(teachers[d].params["lm_head"]))
        drawn = [t.id for t in R.draw_tasks(registry.get(d), d, n=2, horizons=[1],
                                            seed=R.step_seed(0, 0, DOMAINS.index(d)))]
        assert ids == drawn[:1] and drawn[1] in student_ids  # off_share 0.5 of two tasks: one each
    batch, targets = seen[0]
    theirs = [t for _, _, ts in calls[1:] for t in ts]
    seg, off = batch["segment_ids"], batch["off_policy"]
    for i in range(len(seg)):
        for s in set(seg[i]) - {0}:
            ids = tuple(batch["tokens"][i][seg[i] == s])
            marked = off[i][seg[i] == s][:-1]  # shifted like loss_mask: the last position has no target in-segment
            assert marked.all() if ids in {tuple(t.record["token_ids"]) for t in theirs} else not marked.any()
    assert off.sum() > 0 and (off * batch["loss_mask"]).sum() == sum(sum(t.record["loss_mask"]) for t in theirs)
    assert (targets["valid"][batch["loss_mask"] > 0] > 0).all()  # both kinds are scored by the teachers
    for d in DOMAINS:
        mine = [t for t in student if t.task.domain == d]
        assert hist[0][f"success/{d}"] == sum(t.success for t in mine) / len(mine)
        assert hist[0][f"teacher_success/{d}"] == float([t for t in theirs if t.task.domain == d][0].success)
        assert hist[0][f"tokens/{d}"] == sum(sum(t.record["loss_mask"]) for t in student + theirs
                                             if t.task.domain == d)
    assert np.isfinite(hist[0]["train/loss"]) and hist[0]["train/is_nonzero_frac"] > 0


def test_the_tiny_stage_3_draws_its_search_tasks_from_the_world_of_the_demonstrations_and_the_report():
    """Each step draws new search tasks, all from world 0 (recipe_tiny_sft.ENV_OPTIONS), the world of the stage-1 and
    teacher demonstrations (seed 0), the teacher check and the report: not a new world of new names per step."""
    import types
    from a1jax.train import experiment
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    exp = stages.validate(experiment.load(os.path.join(repo, "experiments", "agents_a1_distill.py:tiny,root=/r")))
    run = types.SimpleNamespace(settings=exp.loop, domains={d: i for i, d in enumerate(exp.loop.envs.domains)})
    envs = R.make_envs(exp.loop)
    drawn = [t for step in (0, 4) for t, _ in opd.step_items(run, envs, step, exp.loop.envs.domains)
             if t.domain == "search"]
    assert len(drawn) >= 2 and len({t.id for t in drawn}) == len(drawn)
    assert {t.metadata["world_seed"] for t in drawn} == {0}


def test_domains_the_teacher_check_left_out_hand_their_tasks_to_the_distilled_ones():
    import types
    exp = stages.validate(_config())
    run = types.SimpleNamespace(settings=exp.loop, domains={d: i for i, d in enumerate(DOMAINS)})
    envs = R.make_envs(exp.loop)
    every = opd.step_items(run, envs, 0, DOMAINS)
    assert [t.domain for t, _ in every] == [d for d in DOMAINS for _ in range(2)]  # tasks_per_domain=2 each
    kept = opd.step_items(run, envs, 0, DOMAINS[1:])
    assert len(kept) == len(every) and {t.domain for t, _ in kept} == {DOMAINS[1]}
    assert len({t.id for t, _ in kept}) == len(kept)
    # an anchored domain (trained, toward the student's start) draws config.gate.anchor_tasks when that is set
    assert opd.step_items(run, envs, 0, DOMAINS, anchored=[DOMAINS[0]]) == every  # 0: tasks_per_domain
    c = _config()
    c.gate = ml_collections.ConfigDict(dict(anchor_tasks=1))
    run.settings = stages.validate(c).loop
    items = opd.step_items(run, envs, 0, DOMAINS, anchored=[DOMAINS[0]])
    assert [t.domain for t, _ in items] == [DOMAINS[0]] + [DOMAINS[1]] * 2
    assert items[0][0].id == every[0][0].id  # the same draw, cut short
    c.gate = ml_collections.ConfigDict(dict(anchor_tasks=-1))
    with pytest.raises(ValueError, match="config.gate.anchor_tasks"):
        stages.validate(c)


def test_per_domain_task_counts_and_rows_for_domains_whose_trajectories_differ_in_length():
    """config.envs.domain_tasks: a domain's own tasks per step (a left-out domain's share goes to the others in
    proportion); config.envs.domain_rows: the rows of the batch each domain's trajectories get."""
    import types
    import unittest.mock as mock
    c = _config()
    c.envs.domain_tasks = {DOMAINS[1]: 1}
    c.data.batch_size = 5
    c.envs.domain_rows = {DOMAINS[0]: 1, DOMAINS[1]: 4}
    exp = stages.validate(c)
    run = types.SimpleNamespace(settings=exp.loop, domains={d: i for i, d in enumerate(DOMAINS)},
                                exp=types.SimpleNamespace(data=types.SimpleNamespace(batch_size=5, seq_len=1024)),
                                tok=types.SimpleNamespace(pad_id=0))
    envs = R.make_envs(exp.loop)
    items = opd.step_items(run, envs, 0, DOMAINS)
    assert [t.domain for t, _ in items] == [DOMAINS[0]] * 2 + [DOMAINS[1]]  # tasks_per_domain=2, and 1
    assert [t.domain for t, _ in opd.step_items(run, envs, 0, DOMAINS[1:])] == [DOMAINS[1]] * 3  # all 3 tasks
    assert exp.loop.envs.rows_of(DOMAINS, 5) == [1, 4] and exp.loop.envs.rows_of(DOMAINS[1:], 5) == [5]
    traj = lambda n, d: types.SimpleNamespace(n=n, d=d)
    piece = lambda t, **_: {"tokens": np.arange(1, t.n + 1, dtype=np.int32), "loss_mask": np.ones(t.n, np.float32),
                       "domain_id": t.d}
    with mock.patch.object(R, "rollout_piece", piece), mock.patch.object(opd, "_fits_mesh", lambda run, n: True):
        trajs = [traj(600, 0)] + [traj(900, 1)] * 4  # four long ones fit only in the four rows domain 1 has
        packed, row_domains = opd.pack_step(run, trajs, DOMAINS)
    assert row_domains == [0, 1, 1, 1, 1] and packed.dropped == 0
    assert packed.batch["tokens"].shape == (5, 1024)
    for key, value, expected in [("domain_tasks", {DOMAINS[0]: 0}, "config.envs.domain_tasks"),
                                 ("domain_tasks", {"engineering": 1}, "config.envs.domain_tasks"),
                                 ("domain_rows", {DOMAINS[0]: 1, DOMAINS[1]: 3}, "summing to config.data.batch_size=5"),
                                 ("domain_rows", {DOMAINS[0]: 5}, "every domain of config.envs.domains")]:
        bad = _config()
        bad.data.batch_size = 5
        bad.envs[key] = value
        with pytest.raises(ValueError, match=expected):
            stages.validate(bad)
    odd = _config()
    odd.data.batch_size = 5  # without domain_rows the rows must split equally
    with pytest.raises(ValueError, match="or set config.envs.domain_rows"):
        stages.validate(odd)


def test_stage3_rows_take_the_shortest_halving_of_seq_len_that_holds_every_trajectory_whole():
    assert R.halvings(2048, lambda n: True) == [2048, 1024, 512, 256]
    assert R.halvings(2048, lambda n: n % 1024 == 0) == [2048, 1024]  # e.g. a sequence axis the others do not fit
    assert R.halvings(3000, lambda n: True) == [3000, 1500, 750, 375] and R.halvings(200, lambda n: True) == [200]
    piece = lambda n, d: {"tokens": np.arange(1, n + 1, dtype=np.int32), "loss_mask": np.ones(n, np.float32),
                          "domain_id": d}
    short = [piece(300, 0), piece(200, 0), piece(500, 1)]
    kw = dict(rows=4, pad_id=0, row_domains=[0, 0, 1, 1])
    fitted, full = R.pack_fitted(short, lengths=[2048, 1024, 512, 256], **kw), R.pack(short, seq_len=2048, **kw)
    assert fitted.batch["tokens"].shape == (4, 512) and fitted.placed == full.placed
    assert not full.batch["segment_ids"][:, 512:].any()
    for k, v in full.batch.items():  # the same rows, less padding
        np.testing.assert_array_equal(fitted.batch[k], v[:, :512] if np.ndim(v) == 2 else v, err_msg=k)
    long = short + [piece(1500, 1)]  # holds whole only at 2048
    assert R.pack_fitted(long, lengths=[2048, 1024, 512, 256], **kw).batch["tokens"].shape == (4, 2048)
    over = short + [piece(3000, 1)]  # truncated at any length: the longest, as `pack` alone gives
    packed = R.pack_fitted(over, lengths=[2048, 1024, 512, 256], **kw)
    assert packed.batch["tokens"].shape == (4, 2048) and packed.truncated == 1


def test_a_domain_the_teacher_check_left_out_is_anchored_to_the_students_start(tmp_path):
    """config.gate.anchor: a left-out domain is distilled toward the frozen weights the student started from (so the
    other domains' updates do not drag it away); with anchor=False it sits out."""
    from a1jax.convert import save_params
    from a1jax.distill.runner import RolloutSource
    cfg = M.presets.tiny(**MODEL)
    start = jax.device_get(M.init(cfg, jax.random.PRNGKey(5), include_mtp=False))
    save_params(str(tmp_path / "start"), cfg, start)
    exp = stages.validate(_config(init_from=str(tmp_path / "start")))
    run = RolloutSource(loop.Run(exp, str(tmp_path / "distill"), devices=ONE))
    try:
        assert opd.anchored_domains(run, ["search"]) == ["scientific_agents"]
        assert opd.anchored_domains(run, DOMAINS) == []
        anchor = opd.anchor_teacher(run, k=8)
        for a, b in zip(jax.tree.leaves(anchor.params), jax.tree.leaves(M.unbox(start))):
            np.testing.assert_array_equal(a, b)
        # a copy of its own: the student's state (donated to every step) is not the anchor's buffers
        assert all(x is not y for x, y in zip(jax.tree.leaves(anchor.params),
                                              jax.tree.leaves(M.unbox(run.run.state.params))))
    finally:
        run.run.close()
    c = _config(init_from=str(tmp_path / "start"))
    c.gate = ml_collections.ConfigDict(dict(anchor=False))
    run = RolloutSource(loop.Run(stages.validate(c), str(tmp_path / "distill2"), devices=ONE))
    try:
        assert opd.anchored_domains(run, ["search"]) == []
    finally:
        run.run.close()
    c.gate = ml_collections.ConfigDict(dict(anchor="yes"))
    with pytest.raises(ValueError, match="config.gate.anchor"):
        stages.validate(c)


@pytest.mark.slow  # 8 OPD updates and 4 rollouts on the 248K vocabulary: ~45 s of CPU
def test_rollout_reuse_takes_several_updates_per_rollout_batch_and_resumes_exactly(tmp_path, monkeypatch, teachers,
                                                                                      caplog):
    """config.rollout.reuse=2: one rollout (and one teacher scoring) per two updates, both on the same batch and
    targets; a run stopped by SIGTERM (at the next checkpoint between rollouts) and resumed gives the uninterrupted
    run's steps."""
    rolls, seen = [], []
    real_route, real_step = teacher_lib.route, loop.Run.step_fn

    def route_spy(*a, **kw):
        rolls.append(1)
        return real_route(*a, **kw)

    def step_spy(self, state, batch, *rest):
        seen.append({k: np.asarray(v).copy() for k, v in batch.items()})
        return real_step(self, state, batch, *rest)

    monkeypatch.setattr(opd.teacher_lib, "route", route_spy)
    monkeypatch.setattr(loop.Run, "step_fn", step_spy)

    def config(steps):
        c = _config(steps=steps, reuse=2)
        c.checkpoint.every = 2
        return stages.validate(c)

    full = run_opd(config(4), str(tmp_path / "a"), devices=ONE, teachers=teachers)
    assert len(rolls) == 2 and len(seen) == 4
    for a, b in ((0, 1), (2, 3)):
        assert all(np.array_equal(seen[a][k], seen[b][k]) for k in seen[a])
    assert not np.array_equal(seen[1]["tokens"], seen[2]["tokens"])  # a new rollout at step 2
    assert full[0]["train/loss"] != full[1]["train/loss"]  # the second update sees moved weights
    # SIGTERM (a preemption notice) during the first update: the run stops at the next rollout boundary (step 2,
    # not step 1 inside the reused batch), saves there, and the resumed run gives the uninterrupted run's steps
    calls = []

    def preempted(self, state, batch, *rest):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, state, batch, *rest)

    monkeypatch.setattr(loop.Run, "step_fn", preempted)
    before = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.WARNING, logger="a1jax.train"):
        stopped = run_opd(config(4), str(tmp_path / "b"), devices=ONE, teachers=teachers)
    assert [h["step"] for h in stopped] == [1, 2]
    assert "SIGTERM: saving a checkpoint at step 2" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == before and len(calls) == 2  # handler restored; no third update
    resumed = run_opd(config(4), str(tmp_path / "b"), devices=ONE, teachers=teachers)
    assert [h["step"] for h in resumed] == [3, 4]
    for got, want in zip(resumed, full[2:]):
        assert got["train/loss"] == pytest.approx(want["train/loss"], rel=1e-5, abs=1e-7)
    with pytest.raises(ValueError, match=r"config.rollout.reuse=2: expected a divisor of config.checkpoint.every=3"):
        c = _config(steps=4, reuse=2)
        c.checkpoint.every = 3
        stages.validate(c)


ROLLOUT_STAGES = ("teacher_sft", "grpo", "opd")


def _stage_run(stage, workdir, teachers, steps=3, **train):
    """`steps` steps of `stage` on one domain (opd: both), in-memory teachers for opd; returns (step, loss) pairs."""
    step = train.pop("step", None)  # a stand-in for the stage's step
    c = _config(stage=stage, steps=steps, domains=DOMAINS if stage == "opd" else DOMAINS[1:])
    c.train.update(train)
    if stage != "opd":
        c.envs.tasks_per_domain, c.data.batch_size = 1, 2
    exp = stages.validate(c)
    if step is not None:
        exp = dataclasses.replace(exp, stage=dataclasses.replace(exp.stage, step=step))
    source = functools.partial(opd.OPDSource, teachers=teachers) if stage == "opd" else None
    history = loop.run_stage(exp, str(workdir), devices=ONE, source=source).history
    return [(h["step"], h["train/loss"]) for h in history]


def _stage_run_cmd(stage, workdir):
    """`_stage_run(stage, workdir, _teachers())` as a process of its own, set up as the tests are (conftest: the
    CPU devices of XLA_FLAGS, inherited, and the compilation cache); run it in the repository."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import conftest, test_distill_loop as t; "
            "t._stage_run(sys.argv[2], sys.argv[3], t._teachers())")
    return [sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)), stage, str(workdir)]


@pytest.mark.slow  # per stage: 3 steps straight, then 3 steps stopped twice and resumed, one part in a subprocess
@pytest.mark.parametrize("stage", ROLLOUT_STAGES)
def test_every_rollout_stage_resumes_after_sigterm_and_sigkill_at_random_steps_with_identical_losses(
        stage, tmp_path, monkeypatch, teachers):
    from conftest import sigkill_after_checkpoint
    from test_train import REPO, _losses
    full = _stage_run(stage, tmp_path / "full", teachers)
    assert [s for s, _ in full] == [1, 2, 3]
    # One run stopped twice, after steps 1 and 2 in a random order: by SIGKILL (a process of its own, killed once
    # the step's checkpoint exists, amid the next step's rollouts) and by SIGTERM (a preemption notice during the
    # step's update: the run stops after it, with a checkpoint); each time resumed from the last checkpoint. The
    # order is seeded by the stage: SIGKILL comes first for grpo, second for teacher_sft and opd.
    kill_at, term_at = random.Random(f"stops {stage}").sample([1, 2], 2)
    workdir, real = tmp_path / "stopped", loop.Run.step_fn

    def preempted(self, state, *inputs):
        if self.step == term_at - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, state, *inputs)

    for at in sorted((kill_at, term_at)):
        if at == kill_at:
            sigkill_after_checkpoint(_stage_run_cmd(stage, workdir), workdir, kill_at, cwd=REPO)
        else:
            monkeypatch.setattr(loop.Run, "step_fn", preempted)
            assert _stage_run(stage, workdir, teachers) == full[term_at - 1:term_at]
            monkeypatch.setattr(loop.Run, "step_fn", real)
    assert _stage_run(stage, workdir, teachers) == full[2:]
    assert _losses(workdir) == dict(full)  # exact float equality, step for step, the killed process's steps too


@pytest.mark.slow  # two updates with rollouts per stage: ~30 s of CPU each
@pytest.mark.parametrize("stage", ROLLOUT_STAGES)
def test_k_skipped_updates_in_a_row_stop_every_rollout_stage_in_one_line(stage, tmp_path, teachers):
    from test_faults import _times_inf
    real = stages.STAGES[stage].step
    inf_lr = lambda ctx, *a: real(dataclasses.replace(ctx, tx=_times_inf(ctx.tx)), *a)
    with pytest.raises(loop.TrainingStopped, match=r"stopping at step 2: the last 2 updates were skipped .*"
                                                   r"max_consecutive_skips=2"):
        _stage_run(stage, tmp_path / "nan", teachers, steps=2, max_consecutive_skips=2, step=inf_lr)


def test_a_teachers_scoring_compiles_once_per_power_of_two_of_scored_positions(teachers):
    """Rollout batches differ in how many tokens they generate; the local teacher pads the scored positions to a power
    of two, so ten batches of 300 to 1,000 generated tokens compile its scoring at most three times."""
    teacher = teachers["search"]
    assert [teacher_lib.position_bucket(n) for n in (1, 256, 257, 1000, 1024, 1025)] == [256, 256, 512, 1024, 1024,
                                                                                          2048]
    B, T = 2, 512
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, MODEL["vocab_size"], (B, T)).astype(np.int32)
    batch = dict(tokens=tokens, targets=np.roll(tokens, -1, 1), segment_ids=np.ones_like(tokens),
                 positions=np.tile(np.arange(T, dtype=np.int32), (B, 1)))
    before = teacher._fn._cache_size()
    for n in np.linspace(300, 1000, 10).astype(int):
        mask = np.zeros(B * T, np.float32)
        mask[rng.choice(B * T, n, replace=False)] = 1.0
        out, _ = teacher.score({**batch, "loss_mask": mask.reshape(B, T)})
        assert out["valid"].sum() == n and np.isfinite(out["topk_logp"][out["valid"] > 0]).all()
    assert teacher._fn._cache_size() - before <= 3
