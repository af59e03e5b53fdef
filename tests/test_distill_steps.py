"""Stage-2/3 steps and teacher scoring: GRPO, OPD, teacher_sft, teacher.score, HttpTeacher (docs/spec/recipe.md §6.5
item 13)."""
import dataclasses
import functools
import json
import socket
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from a1jax import model, stages
from a1jax.distill import losses, teachers as teacher_lib
from a1jax.distill import steps as dsteps
from a1jax.train import build, experiment, optim, steps
from a1jax.train.experiment import Experiment
from a1jax.train.state import init_state

NO_AUX = dict(router_aux_loss_coef=0.0, router_z_loss_coef=0.0)


def _tiny(**kw):
    """A 2-layer (DeltaNet + attention) dense model: every compile in this file is of this size."""
    return model.presets.tiny_dense(**{**dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              full_attention_interval=2, loss_chunk_size=16), **kw})


CFG = _tiny()


def _optimizer(lr=3e-3, weight_decay=0.0, steps_total=100):
    return ml_collections.ConfigDict(dict(learning_rate=lr, warmup_steps=1, schedule="constant", min_lr_ratio=1.0,
                                          weight_decay=weight_decay, b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0,
                                          total_steps=steps_total))


def _ctx(cfg, options=None, num_domains=2, **opt):
    tx, schedule = optim.make_optimizer(_optimizer(**opt))
    return steps.StepContext(model=cfg, tx=tx, schedule=schedule, num_domains=num_domains, options=options)


def _batch(cfg, B=8, T=16, seed=0):
    """Rows of two segments (domains 0 and 1), padding at the end of row 1, a random loss mask."""
    r = np.random.default_rng(seed)
    tokens = r.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    seg = np.ones((B, T), np.int32)
    seg[:, T // 2:] = 2
    seg[1, -4:] = 0
    pos = np.zeros((B, T), np.int32)
    for b in range(B):
        for s in (1, 2):
            idx = np.nonzero(seg[b] == s)[0]
            pos[b, idx] = np.arange(len(idx))
    nxt = np.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
    last = np.concatenate([seg[:, 1:] != seg[:, :-1], np.ones((B, 1), bool)], axis=1)  # no target in-segment
    mask = ((r.random((B, T)) < 0.7) & (seg != 0) & ~last).astype(np.float32)
    dom = np.where(seg == 2, 1, 0).astype(np.int32)
    return {k: jnp.asarray(v) for k, v in dict(tokens=tokens, targets=nxt, loss_mask=mask, segment_ids=seg,
                                                positions=pos, domain_ids=dom).items()}


@functools.partial(jax.jit, static_argnums=1)
def _logp_all(params, cfg, batch):
    """Brute force: the full [B,T,V] log-probs."""
    out = model.forward(params, batch["tokens"], cfg, positions=batch["positions"], segment_ids=batch["segment_ids"])
    return jax.nn.log_softmax(out.logits, -1)


def _student_logp(params, cfg, batch):
    return jnp.take_along_axis(_logp_all(params, cfg, batch), batch["targets"][..., None], -1)[..., 0]


score = jax.jit(teacher_lib.score, static_argnames=("cfg", "k", "chunk"))


# --- GRPO -----------------------------------------------------------------------------------------------------------

GRPO_CTX = _ctx(CFG, dsteps.GRPOOptions(eps_low=0.2, eps_high=0.2))
grpo_step = jax.jit(functools.partial(dsteps.grpo_step, GRPO_CTX))  # the one GRPO compile of this file


def test_grpo_with_zero_advantages_has_exactly_zero_gradient_and_update():
    state = init_state(CFG, GRPO_CTX.tx, jax.random.key(0))
    batch = _batch(CFG)
    r = np.random.default_rng(1)
    behavior = _student_logp(state.params, CFG, batch) + jnp.asarray(r.normal(size=batch["tokens"].shape) * 0.1)
    batch = dict(batch, behavior_logp=behavior, advantages=jnp.zeros_like(behavior), reward=jnp.ones((8,)),
                 success=jnp.ones((8,)))  # the same batch structure in every GRPO test: one compile
    new_state, metrics = grpo_step(state, batch)
    assert float(metrics["grad_norm"]) == 0.0 and int(metrics["skipped"]) == 0
    same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), model.unbox(new_state.params), model.unbox(state.params))
    assert all(jax.tree.leaves(same))  # Adam without weight decay: m = 0 gives a zero update
    _, moved = grpo_step(state, dict(batch, advantages=jnp.asarray(r.normal(size=behavior.shape), jnp.float32)))
    assert float(moved["grad_norm"]) > 0


def test_policy_gradient_clip_fraction_matches_a_hand_built_batch():
    ratio = np.array([1.5, 1.5, 0.5, 0.5, 1.1, 0.7, 1.25, 0.79], np.float32)
    adv = np.array([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 2.0, -0.5], np.float32)
    clipped = np.array([1, 0, 1, 0, 0, 1, 1, 1], bool)  # eps_low = eps_high = 0.2: [0.8, 1.2]
    behavior = jnp.full((8,), -1.5)
    logp = behavior + jnp.log(jnp.asarray(ratio))
    loss, diag = losses.policy_gradient_loss(logp, behavior, jnp.asarray(adv), eps_low=0.2, eps_high=0.2)
    np.testing.assert_array_equal(np.asarray(diag["clipped"]) > 0, clipped)
    want = -np.minimum(ratio * adv, np.clip(ratio, 0.8, 1.2) * adv)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    g = jax.grad(lambda lp: losses.policy_gradient_loss(lp, behavior, jnp.asarray(adv))[0].sum())(logp)
    assert np.all(np.asarray(g)[clipped] == 0) and np.all(np.asarray(g)[~clipped] != 0)
    _, tis = losses.policy_gradient_loss(logp, behavior, jnp.asarray(adv), loss_type="tis", tis_cap=1.2)
    np.testing.assert_array_equal(np.asarray(tis["clipped"]) > 0, ratio > 1.2)


def test_grpo_step_metrics_clip_fraction_length_and_domain_rewards():
    state = init_state(CFG, GRPO_CTX.tx, jax.random.key(0))
    batch = _batch(CFG)
    m = np.asarray(batch["loss_mask"]) > 0
    ratio = np.where(np.arange(m.size).reshape(m.shape) % 3 == 0, 1.5, 1.0).astype(np.float32)
    logp = _student_logp(state.params, CFG, batch)
    batch = dict(batch, behavior_logp=logp - jnp.log(jnp.asarray(ratio)), advantages=jnp.ones_like(logp),
                 reward=jnp.asarray([1.0, 0.0, 0.5, 0.5] * 2), success=jnp.asarray([1.0, 0, 0, 1] * 2))
    _, metrics = grpo_step(state, batch)
    np.testing.assert_allclose(metrics["clip_frac"], (ratio[m] > 1.2).mean(), rtol=1e-5)
    assert float(metrics["kl_behavior"]) > 0
    np.testing.assert_allclose(metrics["domain_reward"], [0.5, 0.0], atol=1e-6)  # every row starts in domain 0
    np.testing.assert_allclose(metrics["domain_success"], [0.5, 0.0], atol=1e-6)
    n_seq = sum(len(set(np.asarray(batch["segment_ids"])[b][m[b]])) for b in range(8))
    np.testing.assert_allclose(metrics["response_length"], m.sum() / n_seq, rtol=1e-6)


def test_k3_kl_to_the_reference_is_zero_at_the_reference_and_pulls_towards_it():
    logp = jnp.asarray([-1.0, -2.0, -0.5])
    ref = jnp.asarray([-1.0, -1.0, -1.0])
    f = lambda lp: losses.policy_gradient_loss(lp, lp, jnp.zeros(3), ref_logp=ref, kl_coef=1.0)
    loss, diag = f(logp)
    np.testing.assert_allclose(diag["kl_ref"], np.exp([0.0, 1.0, -0.5]) - [0.0, 1.0, -0.5] - 1, rtol=1e-6)
    g = jax.grad(lambda lp: f(lp)[0].sum())(logp)
    assert g[0] == 0 and g[1] < 0 and g[2] > 0  # gradient descent moves log π towards log π_ref


# --- teacher scoring -------------------------------------------------------------------------------------------------

def test_teacher_score_equals_an_unchunked_brute_force():
    params = model.init(CFG, jax.random.key(3))
    batch = _batch(CFG)
    got = score(params, CFG, batch, k=8, chunk=6)  # 16 positions in chunks of 6: the last chunk is padded
    logp = np.asarray(_logp_all(params, CFG, batch), np.float64)
    order = np.argsort(-logp, -1)[..., :8]
    top = np.take_along_axis(logp, order, -1)
    np.testing.assert_array_equal(got["topk_ids"], order)
    np.testing.assert_allclose(got["topk_logp"], top, atol=1e-5)
    np.testing.assert_allclose(got["sampled_logp"],
                               np.take_along_axis(logp, np.asarray(batch["targets"])[..., None], -1)[..., 0],
                               atol=1e-5)
    np.testing.assert_allclose(np.exp(got["tail_logp"]), 1 - np.exp(top).sum(-1), atol=1e-5)
    np.testing.assert_array_equal(got["valid"], np.asarray(batch["segment_ids"]) != 0)


def test_report_kl_at_positions_equals_an_unchunked_brute_force():
    from a1jax.distill import report
    student, teacher = model.init(CFG, jax.random.key(3)), model.init(CFG, jax.random.key(4))
    batch = _batch(CFG)
    flat = np.asarray([0, 5, 17, 40, 41, 99, 127, 3, 64, 70, 71], np.int32)  # 11 positions in chunks of 4: padded
    got = report.reverse_kl_at(student, CFG, teacher, CFG, {k: batch[k] for k in ("tokens", "positions",
                                                                                "segment_ids")}, flat, chunk=4)
    logq = np.asarray(_logp_all(student, CFG, batch), np.float64).reshape(-1, CFG.vocab_size)[flat]
    logp = np.asarray(_logp_all(teacher, CFG, batch), np.float64).reshape(-1, CFG.vocab_size)[flat]
    want = (np.exp(logq) * (logq - logp)).sum(-1)
    assert want.min() > 1e-3  # two different models: a KL that is not trivially zero
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_report_mean_kl_packs_trajectories_and_equals_one_per_row_brute_force():
    """mean_kl packs several trajectories into a row (segments apart) and scores rows in fixed-size calls; the mean
    must equal each trajectory scored alone, whatever the packing and the padded last call."""
    from a1jax.distill import report
    student, teacher = model.init(CFG, jax.random.key(5)), model.init(CFG, jax.random.key(6))
    r = np.random.default_rng(0)
    trajs, kls = [], []
    for n in r.integers(6, 40, 11):
        ids = r.integers(0, CFG.vocab_size, n).astype(np.int32)
        gen = np.zeros(n, np.float32)
        gen[n // 2:] = 1.0  # the model wrote the second half
        trajs.append(types.SimpleNamespace(record={"token_ids": ids, "loss_mask": gen, "behaviour_logprobs": gen * 0},
                                           domain_id=0, reward=0.0, success=False))
        one = {"tokens": jnp.asarray(np.pad(ids, (0, 40 - n))[None]), "positions": jnp.arange(40)[None],
               "segment_ids": jnp.asarray((np.arange(40) < n)[None].astype(np.int32))}  # one shape: one compile
        logq, logp = (np.asarray(_logp_all(p, CFG, one), np.float64)[0] for p in (student, teacher))
        at = np.flatnonzero(gen[1:] > 0)  # the position before each generated token predicts it
        kls.append((np.exp(logq[at]) * (logq[at] - logp[at])).sum(-1))
    want = np.concatenate(kls).mean()
    tok = types.SimpleNamespace(pad_id=0)
    got = report.mean_kl((CFG, student), (CFG, teacher), trajs, tok, seq_len=64, rows=2)
    assert want > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-5)
    with pytest.raises(ValueError, match="seq_len 16"):
        report.mean_kl((CFG, student), (CFG, teacher), trajs, tok, seq_len=16)


def _canned_response(ids, k, vocab):
    """What a vLLM server returns for prompt_logprobs=k on `ids`, from a fixed toy distribution."""
    r = np.random.default_rng(len(ids))
    entries = [None]
    for j in range(1, len(ids)):
        logp = np.log(np.asarray(jax.nn.softmax(jnp.asarray(r.normal(size=vocab)))))
        top = np.argsort(-logp)[:k]
        e = {str(int(t)): {"logprob": float(logp[t]), "rank": i + 1, "decoded_token": "x"} for i, t in enumerate(top)}
        e[str(int(ids[j]))] = {"logprob": float(logp[ids[j]]), "rank": int((logp > logp[ids[j]]).sum()) + 1,
                               "decoded_token": "y"}
        entries.append(e)
    return {"choices": [{"index": 0, "text": "", "prompt_logprobs": entries}]}, entries


def test_http_teacher_builds_requests_and_parses_prompt_logprobs():
    t = teacher_lib.HttpTeacher("http://127.0.0.1:1/v1/completions", 5.0, model_name="t", k=3)
    req = t.build_request(np.array([5, 9, 2]))
    assert req == {"model": "t", "prompt": [5, 9, 2], "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": 3}
    json.dumps(req)  # serialisable: no numpy ints
    ids = np.array([4, 7, 1, 7, 0])
    resp, entries = _canned_response(ids, 3, 10)
    top_ids, top_logp, sampled, tail = t.parse_response(json.loads(json.dumps(resp)), ids)
    for j in range(1, 5):
        want = sorted(((v["rank"], int(k), v["logprob"]) for k, v in entries[j].items()))[:3]
        np.testing.assert_array_equal(top_ids[j - 1], [w[1] for w in want])
        np.testing.assert_allclose(top_logp[j - 1], [w[2] for w in want], rtol=1e-6)
        assert sampled[j - 1] == pytest.approx(entries[j][str(ids[j])]["logprob"], rel=1e-6)
        assert np.exp(tail[j - 1]) == pytest.approx(1 - np.exp([w[2] for w in want]).sum(), rel=1e-4)
    mapped = teacher_lib.HttpTeacher("u", k=3, vocab_map=np.array([0, 1, -1, 3, 4, 5, 6, 7, 8, 9]))
    m_ids, m_logp, _, m_tail = mapped.parse_response(resp, ids)
    assert np.all(m_ids != 2) and np.all(np.isneginf(m_logp[m_ids == -1]))
    assert np.all(m_tail >= tail - 1e-6)  # unmapped mass joins the tail
    with pytest.raises(ValueError, match="prompt_logprobs has 2 entries"):
        t.parse_response({"choices": [{"prompt_logprobs": [None, {}]}]}, ids)


def test_http_teacher_failures_mark_tokens_invalid_and_are_counted():
    cfg = CFG
    batch = {k: np.asarray(v) for k, v in _batch(cfg, B=2).items()}
    with socket.socket() as s:  # a port that nothing listens on: connection refused, no network needed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = teacher_lib.HttpTeacher(f"http://127.0.0.1:{port}/v1/completions", 2.0, k=4)
    out, stats = t.score(batch)
    assert stats["requests"] == 4 and stats["failed"] == 4
    assert np.all(out["valid"] == 0) and stats["invalid_tokens"] == int(batch["loss_mask"].sum()) > 0

    calls = []

    def fake_post(self, payload):
        calls.append(payload)
        if len(calls) == 2:
            raise TimeoutError("timed out")
        return _canned_response(np.asarray(payload["prompt"]), 4, cfg.vocab_size)[0]

    t._post = types.MethodType(fake_post, t)
    out, stats = t.score(batch)
    assert stats["failed"] == 1 and "TimeoutError" in stats["errors"][0]
    seg = batch["segment_ids"]
    bad = (np.arange(2)[:, None] == 0) & (seg == 2)  # the second request: row 0, segment 2
    assert np.all(out["valid"][bad] == 0)
    good_first = (seg == 1)[0]
    assert out["valid"][0][good_first].sum() == good_first.sum() - 1  # the last token of a segment has no target
    assert stats["invalid_tokens"] == int((batch["loss_mask"] * bad).sum())


# --- options ---------------------------------------------------------------------------------------------------------

def test_step_options_validate_fields_by_name():
    options = lambda c: experiment.step_options(c, stages.STAGES[c.stage])
    c = ml_collections.ConfigDict(dict(stage="opd", distill=dict(estimator="salient", domain_weights=[1.0, 2.0])))
    opts = options(c)
    assert opts.domain_weights == (1.0, 2.0) and hash(opts)
    c.distill.estimator = "topk"
    with pytest.raises(ValueError, match=r"config.distill.estimator='topk': expected one of"):
        options(c)
    c = ml_collections.ConfigDict(dict(stage="grpo", grpo=dict(eps_hi=0.3)))
    with pytest.raises(ValueError, match=r"config.grpo.eps_hi: unknown field"):
        options(c)
    assert options(ml_collections.ConfigDict(dict(stage="sft"))) is None


# --- end to end (docs/spec/recipe.md §6.5 item 13) --------------------------------------------------------------

def _experiment(cfg, stage, batch, distill=None):
    c = ml_collections.ConfigDict(dict(
        stage=stage, seed=0, mesh=dict(data=-1, fsdp=1, expert=1, tensor=1, sequence=1), sharding_rules={},
        optimizer=_optimizer(lr=1e-2).to_dict(), train=dict(steps=100, microbatches=1, z_loss_coef=0.0,
                                                            mtp_loss_coef=0.0)))
    if distill is not None:
        c.distill = distill
    B, T = batch["tokens"].shape
    stage = stages.STAGES[stage]
    return Experiment(config=c, model=cfg, data=types.SimpleNamespace(batch_size=B, seq_len=T), eval_data=None,
                      stage=stage, options=experiment.step_options(c, stage))


def test_opd_step_drives_per_domain_kl_down_against_routed_toy_teachers():
    """A 2-layer student, two fixed teachers routed by domain, and the built (sharded, 3-argument) opd step."""
    batch = _batch(CFG, seed=4)
    sharp = lambda p: dict(p, lm_head=p["lm_head"] * 6.0)  # peaked teachers, far from the near-uniform student
    ta = score(sharp(model.unbox(model.init(CFG, jax.random.key(11)))), CFG, batch, k=8, chunk=6)
    tb = score(sharp(model.unbox(model.init(CFG, jax.random.key(12)))), CFG, batch, k=8, chunk=6)
    routed = jax.tree.map(lambda a, b: jnp.where((batch["domain_ids"] == 0).reshape(
        batch["domain_ids"].shape + (1,) * (a.ndim - 2)), a, b), ta, tb)
    built = build.build(_experiment(CFG, "opd", batch, dict(estimator="salient", is_low=0.0, is_high=1e6)),
                        num_domains=2)
    state = built.init_state(jax.random.key(0))
    batch = dict(batch, behavior_logp=_student_logp(state.params, CFG, batch))
    batch, routed = jax.device_put((batch, routed), built.batch_sharding)
    kls = []
    for _ in range(25):
        state, metrics = built.step_fn(state, batch, routed)
        kls.append(np.asarray(metrics["domain_kl"]))
    kls = np.array(kls)
    assert np.all(kls[-3:].mean(0) < 0.7 * kls[:3].mean(0)), kls
    assert np.mean(np.diff(kls, axis=0) < 0) > 0.7  # falling at most steps, in both domains
    assert int(state.skipped_total) == 0 and float(metrics["is_nonzero_frac"]) == 1.0


def test_teacher_sft_step_memorises_a_packed_batch():
    ctx = _ctx(CFG, lr=1e-2)
    batch = _batch(CFG, seed=5)
    state = init_state(CFG, ctx.tx, jax.random.key(0))
    step = jax.jit(functools.partial(stages.STAGES["teacher_sft"].step, ctx))
    for _ in range(80):
        state, metrics = step(state, batch)
    assert float(metrics["loss"]) < 0.05, float(metrics["loss"])


@pytest.mark.slow
def test_microbatches_accumulate_to_the_full_batch_gradient_for_opd_and_grpo():
    """Every normalisation is precomputed as per-token weights over the whole batch, so k microbatches are exact."""
    batch = _batch(CFG, seed=6)
    params = model.init(CFG, jax.random.key(0))
    logp = _student_logp(params, CFG, batch)
    r = np.random.default_rng(6)
    batch = dict(batch, behavior_logp=logp + jnp.asarray(r.normal(size=logp.shape) * 0.2, jnp.float32),
                 advantages=jnp.asarray(r.normal(size=logp.shape), jnp.float32))
    teacher = score(dict(model.unbox(model.init(CFG, jax.random.key(1)))), CFG, batch, k=8, chunk=6)
    opd = dsteps.OPDOptions(estimator="mix", norm="domain", sft_coef=0.1, reward_coef=0.2)
    cases = [(dsteps.opd_loss_and_grads, opd, (batch, teacher)),
             (dsteps.grpo_loss_and_grads, dsteps.GRPOOptions(norm="sequence"), (batch,))]
    for fn, opts, args in cases:
        out = [jax.jit(functools.partial(fn, dataclasses.replace(_ctx(CFG, opts), microbatches=k)))(params, *args)
               for k in (1, 2)]
        np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5)
        for a, b in zip(jax.tree.leaves(out[0][2]), jax.tree.leaves(out[1][2])):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_off_policy_opd_is_sft_on_the_batch_tokens_whatever_the_teacher_targets():
    """config.distill.policy='off' (sequence-level KD, an ablation): the loss is the NLL of the batch's own tokens
    (there: the teachers' rollouts), reduced per domain like the KL term it replaces; the teacher targets and the
    behaviour log-probs play no part."""
    batch = _batch(CFG, seed=7)
    params = model.init(CFG, jax.random.key(0))
    logp = _student_logp(params, CFG, batch)
    batch = dict(batch, behavior_logp=logp + 3.0)  # far outside the IS band: on-policy would drop every token
    ctx = _ctx(CFG, dsteps.OPDOptions(policy="off", norm="domain"))
    want, _ = losses.sft_loss(logp, batch["loss_mask"], batch["segment_ids"], batch["domain_ids"], norm="domain",
                              num_domains=2)
    got = [dsteps.opd_loss_and_grads(ctx, params, batch, score(model.unbox(model.init(CFG, jax.random.key(s))), CFG,
                                                                 batch, k=8, chunk=6)) for s in (1, 2)]
    (la, ma, ga), (lb, _, gb) = got
    assert float(la) == pytest.approx(float(want), rel=1e-5) and float(la) == pytest.approx(float(lb), rel=1e-6)
    flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
    np.testing.assert_allclose(flat(ga), flat(gb), rtol=1e-5, atol=1e-7)
    assert np.abs(flat(ga)).max() > 0 and float(ma["distill_tokens"]) == 0.0
    teacher = score(model.unbox(model.init(CFG, jax.random.key(1))), CFG, batch, k=8, chunk=6)
    on, _, _ = dsteps.opd_loss_and_grads(_ctx(CFG, dsteps.OPDOptions(norm="domain")), params, batch, teacher)
    assert float(on) != pytest.approx(float(la))  # the recipe's loss is another one
    with pytest.raises(ValueError, match=r"config.distill.policy='sideways': expected one of"):
        dsteps.OPDOptions(policy="sideways").check()
    with pytest.raises(ValueError, match=r"config.distill.sft_coef/reward_coef=\(0.5, 0.0\): expected 0 and 0"):
        dsteps.OPDOptions(policy="off", sft_coef=0.5).check()


def test_mixed_policy_weighs_the_teachers_tokens_without_the_importance_ratio():
    """config.distill.policy='mix' (GKD's data mix): where batch["off_policy"] marks a teacher's own rollout, its
    tokens count with importance weight 1 whatever their behaviour log-probs (the teacher's, far from the student's),
    while the student's own tokens keep the IS band; so the loss equals the recipe's on a batch whose teacher tokens
    carry the student's own log-probs as behaviour."""
    batch = _batch(CFG, seed=8)
    params = model.init(CFG, jax.random.key(0))
    logp = np.asarray(_student_logp(params, CFG, batch))
    teacher = score(model.unbox(model.init(CFG, jax.random.key(1))), CFG, batch, k=8, chunk=6)
    off = np.zeros_like(logp)
    off[::2] = 1.0  # every other row is a teacher's rollout
    ctx = _ctx(CFG, dsteps.OPDOptions(policy="mix", norm="domain"))
    far = dict(batch, behavior_logp=np.where(off > 0, logp + 3.0, logp), off_policy=off)  # outside [0.2, 5] there
    ratio_one = dict(batch, behavior_logp=logp)
    (lm, mm, gm), (lr, mr, gr) = (dsteps.opd_loss_and_grads(ctx, params, b, teacher) for b in (far, ratio_one))
    assert float(lm) == pytest.approx(float(lr), rel=1e-6)
    assert float(mm["distill_tokens"]) == float(mr["distill_tokens"]) == float(mr["masked_tokens"]) > 0
    flat = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
    np.testing.assert_allclose(flat(gm), flat(gr), rtol=1e-5, atol=1e-7)
    _, m_on, _ = dsteps.opd_loss_and_grads(ctx, params, dict(far, off_policy=np.zeros_like(off)), teacher)
    assert float(m_on["distill_tokens"]) < float(mm["distill_tokens"])  # without the mark the band drops them
    with pytest.raises(ValueError, match=r"config.distill.off_share=1.0: expected a number strictly between 0 and 1"):
        dsteps.OPDOptions(policy="mix", off_share=1.0).check()
    with pytest.raises(ValueError, match=r"config.distill.off_temperature=-0.5: expected -1 \(config.rollout"):
        dsteps.OPDOptions(policy="mix", off_temperature=-0.5).check()
    with pytest.raises(ValueError, match=r"config.distill.reward_coef=0.5: expected 0 with policy='mix'"):
        dsteps.OPDOptions(policy="mix", reward_coef=0.5).check()
    with pytest.raises(ValueError, match=r"config.distill.estimator='sampled': expected 'salient' or 'full'"):
        dsteps.OPDOptions(policy="mix", estimator="sampled").check()
