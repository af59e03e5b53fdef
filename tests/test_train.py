"""Stage-1 trainer: the SFT objective, accumulation, the NaN guard, configs, checkpoints, and whole runs."""
import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import sigkill_after_checkpoint, subprocess_env
from a1jax import model, sharding, stages
from a1jax.cli import main as cli_main
from a1jax.train import checkpoint, experiment, optim, steps
from a1jax.train.state import init_state, state_shardings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.py")
A1JAX = [sys.executable, "-m", "a1jax.cli"]


def _ctx(cfg, microbatches=1, num_domains=2, **kw):
    opt = experiment.load(QUICKSTART).optimizer
    opt.total_steps = 10
    tx, schedule = optim.make_optimizer(opt)
    return steps.StepContext(model=cfg, tx=tx, schedule=schedule, num_domains=num_domains,
                             microbatches=microbatches, **kw)


def _toy_batch(cfg, B=4, T=48, seed=0):
    r = np.random.default_rng(seed)
    tokens = r.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    seg = np.ones((B, T), np.int32)
    seg[1, 20:] = 2
    seg[2, 40:] = 0  # padding
    targets = np.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
    mask = (r.random((B, T)) < 0.6).astype(np.float32) * (seg != 0)
    mask[:, -1] = 0
    mask[1, 19] = 0  # last token of segment 1 has no target
    pos = np.zeros((B, T), np.int32)
    for b in range(B):
        for s in np.unique(seg[b]):
            idx = np.where(seg[b] == s)[0]
            pos[b, idx] = np.arange(len(idx))
    domains = np.where(np.arange(B)[:, None] % 2 == 0, 0, 1).repeat(T, 1).astype(np.int32)
    return {k: jnp.asarray(v) for k, v in dict(tokens=tokens, targets=targets, loss_mask=mask, segment_ids=seg,
                                                positions=pos, domain_ids=domains).items()}


def test_sft_loss_equals_hand_computed_masked_ce():
    cfg = model.presets.tiny(loss_chunk_size=16)
    ctx = _ctx(cfg)
    params = model.init(cfg, jax.random.key(0))
    batch = _toy_batch(cfg)
    loss, metrics, _ = jax.jit(functools.partial(steps.sft_loss_and_grads, ctx))(params, batch)
    logits = model.forward(params, batch["tokens"], cfg, positions=batch["positions"],
                           segment_ids=batch["segment_ids"]).logits
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    nll = -np.take_along_axis(logp, np.asarray(batch["targets"])[..., None], -1)[..., 0]
    m = np.asarray(batch["loss_mask"])
    np.testing.assert_allclose(metrics["loss"], (nll * m).sum() / m.sum(), rtol=1e-5)
    out = model.forward(params, batch["tokens"], cfg, positions=batch["positions"], segment_ids=batch["segment_ids"])
    np.testing.assert_allclose(loss, (nll * m).sum() / m.sum() + cfg.router_aux_loss_coef * out.aux["aux_loss"],
                               rtol=1e-5)
    d = np.asarray(batch["domain_ids"])
    for dom in (0, 1):
        sel = m * (d == dom)
        np.testing.assert_allclose(metrics["domain_nll_sum"][dom] / metrics["domain_tokens"][dom],
                                   (nll * sel).sum() / sel.sum(), rtol=1e-5)


def test_gradient_accumulation_equals_one_big_batch():
    cfg = model.presets.tiny(router_aux_loss_coef=0.0)  # the aux loss is per microbatch by design
    params = model.init(cfg, jax.random.key(0))
    batch = _toy_batch(cfg)
    run = lambda k: jax.jit(functools.partial(steps.sft_loss_and_grads, _ctx(cfg, microbatches=k)))(params, batch)
    l1, m1, g1 = run(1)
    l4, m4, g4 = run(4)
    np.testing.assert_allclose(l4, l1, rtol=1e-6)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    # fp32 sums in another order: the absolute error is relative to the gradient's scale (on an AMD EPYC host the
    # largest is 1.6e-7 with max |g| 0.12, in elements that are small sums of larger terms; 1e-7 flat was too tight)
    scale = max(float(np.max(np.abs(b))) for b in jax.tree.leaves(g1))
    for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=1e-5)


def test_nan_guard_skips_the_update_and_counts_it():
    cfg = model.presets.tiny()
    ctx = _ctx(cfg)
    state = init_state(cfg, ctx.tx, jax.random.key(0))
    step = jax.jit(functools.partial(steps.sft_step, ctx))
    batch = _toy_batch(cfg)
    good, m = step(state, batch)
    assert int(m["skipped"]) == 0 and int(good.skipped_consecutive) == 0
    assert not np.allclose(good.params["final_norm"].value, state.params["final_norm"].value)
    poisoned = state.params["final_norm"].value.at[0].set(jnp.nan)
    bad_state = jax.tree.map(lambda x: x, state)
    bad_state.params["final_norm"] = model.Param(poisoned, state.params["final_norm"].axes)
    after, m = step(bad_state, batch)
    after2, _ = step(after, batch)
    assert int(m["skipped"]) == 1 and int(after2.skipped_total) == 2 and int(after2.skipped_consecutive) == 2
    np.testing.assert_array_equal(after2.params["embed"].value, state.params["embed"].value)  # untouched
    assert int(after2.step) == 2


def test_weight_decay_mask_spares_norms_biases_decay_params_and_router():
    cfg = model.presets.tiny()
    mask = optim.decay_mask(model.abstract_params(cfg))
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree.leaves_with_path(mask)}
    for name, decays in flat.items():
        expected = not any(t in name for t in ("norm", "A_log", "dt_bias", "router", "shared_expert_gate"))
        assert decays == expected, name
    assert flat["['embed'].value"] and flat["['blocks'][0]['linear_attn']['in_proj_q'].value"]


def test_data_and_fsdp_sharded_step_matches_one_device():
    cfg = model.presets.tiny()
    ctx = _ctx(cfg)
    batch = _toy_batch(cfg, B=4, T=32)
    results = []
    for mesh_cfg in (dict(data=1, fsdp=1), dict(data=2, fsdp=2)):
        n = mesh_cfg["data"] * mesh_cfg["fsdp"]
        mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:n])
        rules = sharding.merged_rules()
        abstract = jax.eval_shape(functools.partial(init_state, cfg, ctx.tx), jax.random.key(0))
        sh = state_shardings(abstract, mesh, rules)
        bsh = sharding.batch_sharding(mesh, rules)
        state = jax.jit(functools.partial(init_state, cfg, ctx.tx), out_shardings=sh)(jax.random.key(0))
        grads = jax.jit(functools.partial(steps.sft_loss_and_grads, ctx), in_shardings=(sh.params, bsh))(
            state.params, jax.device_put(batch, bsh))[2]
        step = jax.jit(functools.partial(steps.sft_step, ctx), in_shardings=(sh, bsh), out_shardings=(sh, None))
        state, m = step(state, jax.device_put(batch, bsh))
        if n > 1:  # parameters really are sharded over fsdp
            assert state.params["embed"].value.sharding.spec == P(None, "fsdp")
        results.append((m, jax.device_get(grads)))
    (m1, g1), (m4, g4) = results
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    # (post-Adam parameters are not compared: m / sqrt(v) turns fp noise in near-zero gradients into +-lr)


def test_impossible_mesh_and_bad_flags_name_the_field():
    with pytest.raises(ValueError, match=r"3 x|= 3 devices|but 8 are available"):
        sharding.mesh_shape(dict(data=3), 8)
    with pytest.raises(ValueError, match="'expert'=3 must divide num_experts=8"):
        sharding.check_model_fits_mesh(model.presets.tiny(), sharding.make_mesh(dict(data=2, expert=3),
                                                                                  jax.devices()[:6]))
    config = experiment.load(QUICKSTART)
    with pytest.raises(ValueError, match="--config.optimizer.learning_rat=1: config has no field"):
        experiment.apply_overrides(config, ["--config.optimizer.learning_rat=1"])
    with pytest.raises(ValueError, match="--config.train.steps=many: expected a int"):
        experiment.apply_overrides(config, ["--config.train.steps=many"])
    bad = experiment.apply_overrides(experiment.load(QUICKSTART), ["--config.optimizer.schedule=sawtooth"])
    with pytest.raises(ValueError, match="config.optimizer.schedule='sawtooth'"):
        stages.validate(bad)
    bad = experiment.apply_overrides(experiment.load(QUICKSTART), ["--config.model.overrides.num_experts_per_tok=99"])
    with pytest.raises(ValueError, match="config.model: .*num_experts_per_tok=99"):
        stages.validate(bad)
    bad = experiment.apply_overrides(experiment.load(QUICKSTART), ["--config.train.microbatches=3"])
    with pytest.raises(ValueError, match="config.train.microbatches=3"):
        stages.validate(bad)


def test_resuming_with_a_different_model_names_the_fields(tmp_path):
    from a1jax.train.loop import _check_same_model
    config = experiment.load(QUICKSTART)
    (tmp_path / "checkpoints").mkdir()
    checkpoint.save_json(str(tmp_path / "config.json"), config.to_dict())
    _check_same_model(str(tmp_path), config)  # same model: fine
    changed = experiment.apply_overrides(experiment.load(QUICKSTART), ["--config.model.overrides.hidden_size=32"])
    with pytest.raises(ValueError, match="model.overrides.hidden_size: 64 -> 32"):
        _check_same_model(str(tmp_path), changed)


def test_cli_reports_a_bad_flag_as_one_line(capsys, tmp_path):
    code = cli_main(["train", "--config", QUICKSTART, "--workdir", str(tmp_path), "--config.data.seq_len=1"])
    assert code == 2
    assert "config.data.seq_len=1: expected an integer in [2, 262144]" in capsys.readouterr().err


def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path):
    cfg = model.presets.tiny()
    ctx = _ctx(cfg)
    state = init_state(cfg, ctx.tx, jax.random.key(0))
    ck = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False)
    ck.save(1, state, {"it": 1}, {"c": 1})
    later = jax.tree.map(lambda x: x + 1 if x.dtype == jnp.float32 else x, state)
    ck.save(2, later, {"it": 2}, {"c": 1})
    ck.wait()
    # damage step 2: truncate every data file of its state
    for root, _, files in os.walk(tmp_path / "2" / "state"):
        for f in files:
            if os.path.getsize(os.path.join(root, f)) > 0:
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.truncate(7)
    abstract = jax.eval_shape(lambda: state)
    step, restored, data, _ = ck.restore_latest(abstract)
    assert step == 1 and data == {"it": 1}
    np.testing.assert_array_equal(restored.params["embed"].value, state.params["embed"].value)
    assert (tmp_path / "damaged-2").is_dir()  # set aside, not deleted
    shutil.rmtree(tmp_path / "1" / "state")
    with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "1")):
        ck.restore_latest(abstract)
    ck.close()


def _train_cmd(workdir, *extra):
    return [*A1JAX, "train", "--config", QUICKSTART + ":smoke", "--workdir", str(workdir),
            "--config.model.overrides.hidden_size=32", "--config.data.batch_size=1", "--config.train.log_every=1",
            "--config.eval.every=0", *extra]


def _losses(workdir):
    by_step = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "train/loss" in rec:
                by_step[rec["step"]] = rec["train/loss"]  # a resumed run rewrites later steps: keep the last
    return by_step


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    env = subprocess_env()
    steps_flags = ("--config.train.steps=6", "--config.checkpoint.every=2", "--config.checkpoint.async_save=false")
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(straight, *steps_flags), check=True, env=env, capture_output=True, cwd=REPO)
    killed = tmp_path / "killed"
    sigkill_after_checkpoint(_train_cmd(killed, *steps_flags), killed, 4, env=env, cwd=REPO)
    subprocess.run(_train_cmd(killed, *steps_flags), check=True, env=env, capture_output=True, cwd=REPO)
    a, b = _losses(straight), _losses(killed)
    assert sorted(a) == [1, 2, 3, 4, 5, 6]
    assert a == b  # exact float equality, step for step


def test_quickstart_runs_a_few_steps_and_writes_metrics(tmp_path):
    env = subprocess_env()
    out = subprocess.run(_train_cmd(tmp_path, "--config.eval.every=4"), env=env, capture_output=True, text=True,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 4/4" in out.stdout and "tok/s" in out.stdout and "eta" in out.stdout
    recs = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    train_recs = [r for r in recs if "train/loss" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4]
    assert all(np.isfinite(r["train/loss"]) and r["train/loss"] > 0 for r in train_recs)
    assert any("eval/loss" in r for r in recs)
    for key in ("train/grad_norm", "train/learning_rate", "perf/tokens_per_s_per_device", "perf/mfu",
                "experts/layer00_max_over_mean"):
        assert any(key in r for r in train_recs), key
    domains = {k for r in train_recs for k in r if k.startswith("train/loss_")}
    assert domains and domains <= {"train/loss_customer_service", "train/loss_engineering",
                                   "train/loss_general_agentic"}
    assert os.listdir(tmp_path / "tensorboard")
    assert (tmp_path / "checkpoints" / "4").is_dir()
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["model"]["overrides"]["hidden_size"] == 32
    cfg, params = checkpoint.load_trained_params(str(tmp_path))  # what `a1jax rollout --checkpoint WORKDIR` reads
    assert cfg.hidden_size == 32 and params["embed"].value.shape == (cfg.vocab_size, 32)
    cfg, values = checkpoint.load_init_params(str(tmp_path))  # what `--init_from WORKDIR` reads: the same, unboxed
    np.testing.assert_array_equal(values["embed"], params["embed"].value)


def test_init_from_a_converted_checkpoint_checks_the_model(tmp_path):
    from a1jax.convert import save_params
    exp = stages.validate(experiment.apply_overrides(experiment.load(QUICKSTART),
                                                         ["--config.model.overrides.hidden_size=16"]))
    params = jax.device_get(model.init(exp.model, jax.random.key(3)))
    save_params(str(tmp_path / "ckpt"), exp.model, params)
    abstract = model.abstract_params(exp.model, include_mtp=False)
    shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract)
    path = str(tmp_path / "ckpt")
    loaded = checkpoint.place_init_params(path, *checkpoint.load_init_params(path), abstract, shardings)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    other = stages.validate(experiment.apply_overrides(experiment.load(QUICKSTART),
                                                           ["--config.model.overrides.hidden_size=32"]))
    with pytest.raises(ValueError, match="does not match config.model"):
        checkpoint.place_init_params(path, *checkpoint.load_init_params(path),
                                     model.abstract_params(other.model, include_mtp=False), shardings)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        checkpoint.load_init_params(str(tmp_path / "missing"))


def test_a_state_started_from_other_params_compiles_the_step_once(tmp_path):
    """`with_new_params` (init_from) lays the fresh optimizer state out as the step's output: the second step reuses
    the first step's executable (it compiled twice before: a 35 s stall per stage of the tiny recipe)."""
    from a1jax.train import build
    from a1jax.train.state import with_new_params
    exp = stages.validate(experiment.apply_overrides(experiment.load(QUICKSTART), [
        "--config.model.overrides.hidden_size=16", "--config.model.overrides.vocab_size=4096",
        "--config.data.tokenizer=qwen3_5_compact", "--config.data.seq_len=32", "--config.data.batch_size=4"]))
    built = build.build(exp, num_domains=2, devices=jax.devices()[:1])
    state = built.init_state(jax.random.key(0))
    params = jax.device_put(model.init(exp.model, jax.random.key(1)), built.state_shardings.params)
    state = with_new_params(state, params, built.tx, built.state_shardings)
    for a, s in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(built.state_shardings.opt_state)):
        assert a.sharding == s
    batch = _toy_batch(exp.model, B=4, T=32)
    for _ in range(2):
        state, _ = built.step_fn(state, batch)
    assert built.step_fn._cache_size() == 1
