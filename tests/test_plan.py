"""`a1jax plan`: FLOP counts against the analytic model, memory figures, early mesh errors, and the CLI."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from a1jax import plan as planner, stages
from a1jax.model.params import count_params
from a1jax.train import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.py")
TINY = dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, moe_intermediate_size=32,
            shared_expert_intermediate_size=32, loss_chunk_size=256, deltanet_chunk_size=32, remat_policy="none")


def tiny_experiment(mesh=None, seq_len=256, batch_size=8, **model):
    c = experiment.load(QUICKSTART)
    c.model.overrides = dict(TINY, **model)
    c.data.seq_len, c.data.batch_size, c.data.eval_batch_size = seq_len, batch_size, batch_size
    c.mesh = {**dict(data=-1, fsdp=1, expert=1, tensor=1, sequence=1), **(mesh or {})}
    return stages.validate(c, check_vocabulary=False)  # vocab 512: plans only, no tokens are read


@pytest.fixture(scope="module")
def moe_plan():
    """64 experts, top-8, fsdp=2 x data=4 on the 8 test devices."""
    exp = tiny_experiment(mesh=dict(fsdp=2), num_experts=64, num_experts_per_tok=8)
    return planner.plan(exp, devices=jax.devices()[:8], device_kind="h100"), exp


def test_moe_program_flops_match_6n_active_plus_attention(moe_plan):
    f = moe_plan[0]["flops"]
    # a dense all-experts dispatch would be ~E/k = 8x on the expert FLOPs; the CPU grouped matmul (xla_cpu, the CPU
    # default) pads each expert's rows up to its row tile, which at these tiny sizes costs ~1.45x
    assert 1.0 <= f["ratio_program"] <= 1.6, f
    assert 1.0 <= f["ratio_program_remat_deltanet"] <= f["ratio_program"], f


def test_dense_program_flops_match_analytic_and_the_compiled_count():
    """One device, so that nothing is replicated: the compiled HLO count must equal the traced count exactly."""
    exp = tiny_experiment(mesh=dict(data=1), num_experts=0, num_experts_per_tok=0, shared_expert_intermediate_size=0,
                          intermediate_size=96)
    f = planner.plan(exp, devices=jax.devices()[:1])["flops"]
    assert 1.0 <= f["ratio_program_remat_deltanet"] <= 1.3, f  # DeltaNet chunks weigh a lot at hidden 64
    assert f["compiled_dots_per_device"] == pytest.approx(f["program_per_device"], rel=1e-6)


def test_compiled_dot_count_multiplies_scan_bodies_by_trip_count():
    def body(h, w):
        return jnp.tanh(h @ w), None

    args = (jax.ShapeDtypeStruct((32, 64), jnp.float32), jax.ShapeDtypeStruct((10, 64, 64), jnp.float32))
    scanned = jax.jit(lambda h, ws: jax.lax.scan(body, h, ws)[0]).lower(*args).compile()
    flops, unknown = planner.hlo_dot_flops(scanned.as_text())
    assert flops == 10 * 2 * 32 * 64 * 64 and unknown == 0
    traced = jax.jit(lambda h, ws: jax.lax.scan(body, h, ws)[0]).trace(*args)
    assert planner.program_flops(traced.jaxpr.jaxpr) == flops


def test_ragged_dot_counts_routed_rows_only():
    m, k, n, e = 256, 32, 48, 16
    f = lambda x, w, g: jax.lax.ragged_dot(x, w, g)
    args = (jax.ShapeDtypeStruct((m, k), jnp.float32), jax.ShapeDtypeStruct((e, k, n), jnp.float32),
            jax.ShapeDtypeStruct((e,), jnp.int32))
    assert planner.program_flops(jax.make_jaxpr(f)(*args).jaxpr) == 2 * m * k * n
    grads = jax.make_jaxpr(jax.grad(lambda x, w, g: f(x, w, g).sum(), argnums=(0, 1)))(*args)
    assert planner.program_flops(grads.jaxpr) == 3 * 2 * m * k * n  # fwd, dx, dw


def test_memory_figures_are_positive_and_params_match_sharded_count(moe_plan):
    p, exp = moe_plan
    m = p["memory_per_device"]
    assert all(m[k] > 0 for k in ("params", "optimizer_state", "batch", "compiled_arguments", "compiled_temp", "peak"))
    assert m["compiled_arguments"] >= m["params"] + m["optimizer_state"]
    total, _ = count_params(exp.model)  # text model; fp32; experts split over fsdp=2 (the largest leaves)
    assert total * 4 / 2 <= m["params"] <= total * 4 * 1.1
    assert sum(r["bytes_per_device"] for r in p["param_groups"]) == m["params"]
    experts = [r for r in p["param_groups"] if r["name"].endswith("experts_gate_up")]
    assert experts and all("fsdp" in r["spec"] for r in experts)


def test_impossible_mesh_fails_before_compiling_with_the_numbers():
    with pytest.raises(ValueError, match=r"'expert'=8 must divide num_experts=12"):  # validate() already refuses it
        planner.plan(tiny_experiment(mesh=dict(data=1, expert=8), num_experts=12, num_experts_per_tok=2),
                     devices=jax.devices()[:8])
    exp = tiny_experiment(mesh=dict(data=2, fsdp=2))
    with pytest.raises(ValueError, match=r"= 4 devices, but 8 are available"):
        planner.plan(exp, devices=jax.devices()[:8])


def test_unknown_device_kind_names_the_known_ones():
    with pytest.raises(ValueError, match=r"--device_kind 'tpu v9'.*h100"):
        planner.device_table("tpu v9", planner.HBM_BYTES)


def test_cli_plans_on_16_virtual_devices(tmp_path):
    out = tmp_path / "plan.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the planner sets the device count itself
    cmd = [sys.executable, "-m", "a1jax.cli", "plan", "--config", QUICKSTART, "--devices", "16", "--platform", "gpu",
           "--json", str(out), "--config.data.seq_len=128", "--config.data.batch_size=16",
           "--config.data.eval_batch_size=16", "--config.model.overrides.vocab_size=512"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "data=16" in r.stdout and "FITS" in r.stdout and "h100" in r.stdout
    p = json.loads(out.read_text())
    assert p["config"]["devices"] == 16 and p["fits"]
    assert math.isfinite(p["flops"]["ratio_program"]) and p["times"]["compile_s"] > 0


def test_more_devices_than_the_running_backend_has_is_a_clear_error():
    have = len(jax.devices("cpu"))  # conftest started the backend with 8
    with pytest.raises(ValueError, match=rf"--devices {have + 8}: .*already initialised with {have} devices"):
        planner.use_cpu_devices(have + 8)
    assert len(planner.use_cpu_devices(2)) == 2


def test_auto_kernels_resolve_to_the_target_platforms_and_named_ones_stay(monkeypatch):
    for op in ("MOE", "ATTENTION", "GDN"):
        monkeypatch.delenv(f"KERNELS_{op}_IMPL", raising=False)
    c = experiment.load(QUICKSTART)
    c.model.overrides = dict(TINY, moe_impl="auto", attention_impl="auto", deltanet_impl="xla")
    assert planner.resolve_impls(c, "gpu") == {"moe_impl": "auto -> pallas_gpu", "attention_impl": "auto -> pallas_gpu"}
    assert (c.model.overrides.moe_impl, c.model.overrides.deltanet_impl) == ("pallas_gpu", "xla")
    c.model.overrides.moe_impl = "auto"
    assert planner.resolve_impls(c, "tpu") == {"moe_impl": "auto -> pallas_tpu"}


def test_interpreted_kernels_count_at_their_cost_estimate_not_every_grid_block():
    """Causal flash over 4 blocks runs 10 of 16 block pairs: the compiled count takes the kernel's estimate, while the
    interpreted HLO holds all 16 (the skipped blocks sit in a cond branch that the HLO count cannot rule out)."""
    from kernels.attention import flash_attention
    q, kv = jax.ShapeDtypeStruct((1, 256, 2, 32), jnp.float32), jax.ShapeDtypeStruct((1, 256, 1, 32), jnp.float32)
    traced = jax.jit(lambda q, k, v: flash_attention(q, k, v, impl="pallas_gpu", block_q=64, block_k=64)).trace(
        q, kv, kv)
    kernels = {}
    prog = planner.program_flops(traced.jaxpr.jaxpr, kernels=kernels)
    pair = 2 * 2 * (2 * 64 * 64 * 32)  # 2 heads x 2 matmuls of [64, 64] x [64, 32]
    assert kernels == {"flash_fwd": 10 * pair} and prog == kernels["flash_fwd"]
    hlo = traced.lower().compile().as_text()
    assert planner.hlo_dot_flops(hlo)[0] == 16 * pair
    assert planner.hlo_dot_flops(hlo, skip_scopes=tuple(kernels))[0] == 0


def test_compiled_dot_count_reads_a_loop_counter_with_a_start_and_a_step():
    """XLA:TPU-style HLO (no known_trip_count): the counter starts at 2 (through a copy) and steps by 3 while < 11, so
    the body's [8, 16] x [16, 4] dot runs 3 times; the dot outside the loop once."""
    hlo = """HloModule m
%body (p: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %p = (s32[]{:T(128)}, f32[8,4]{1,0:T(8,128)}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %three = s32[]{:T(128)} constant(3)
  %next = s32[]{:T(128)} add(%i, %three)
  %x = f32[8,16]{1,0:T(8,128)} constant({...})
  %w = f32[16,4]{1,0:T(8,128)} constant({...})
  %y = f32[8,4]{1,0:T(8,128)} convolution(%x, %w), dim_labels=bf_io->bf
  ROOT %t = (s32[]{:T(128)}, f32[8,4]{1,0:T(8,128)}) tuple(%next, /*index=1*/%y)
}
%cond (q: (s32[], f32[8,4])) -> pred[] {
  %q = (s32[]{:T(128)}, f32[8,4]{1,0:T(8,128)}) parameter(0)
  %j = s32[]{:T(128)} get-tuple-element(%q), index=0
  %n = s32[]{:T(128)} constant(11)
  ROOT %lt = pred[]{:T(512)} compare(%j, %n), direction=LT
}
ENTRY %main (a: f32[8,4]) -> f32[8,4] {
  %a = f32[8,4]{1,0:T(8,128)} parameter(0)
  %two = s32[]{:T(128)} constant(2)
  %start = s32[]{:T(128)} copy(%two)
  %init = (s32[]{:T(128)}, f32[8,4]{1,0:T(8,128)}) tuple(%start, %a)
  %loop = (s32[]{:T(128)}, f32[8,4]{1,0:T(8,128)}) while(%init), condition=%cond, body=%body
  %out = f32[8,4]{1,0:T(8,128)} get-tuple-element(%loop), index=1
  %b = f32[4,16]{1,0:T(8,128)} constant({...})
  ROOT %z = f32[8,16]{1,0:T(8,128)} dot(%out, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}
"""
    body_dot, outer_dot = 2 * 8 * 4 * 16, 2 * 8 * 16 * 4
    assert planner.hlo_dot_flops(hlo) == (3 * body_dot + outer_dot, 0)
    assert planner.hlo_dot_flops(hlo.replace("constant(11)", "constant(12)"))[0] == 4 * body_dot + outer_dot


def test_analytic_flops_count_the_mtp_module_only_when_the_step_trains_it():
    from a1jax import model
    from a1jax.model.params import FULL, ParamSpec, layer_specs
    from a1jax.train import metrics
    import numpy as np
    cfg = model.presets.qwen35_35b_a3b()
    T, H, V = 65536, cfg.hidden_size, cfg.vocab_size
    without, with_mtp = metrics.model_flops_breakdown(cfg, T), metrics.model_flops_breakdown(cfg, T, mtp=True)
    assert set(without) == {"layers", "attention", "lm_head"} and {k: with_mtp[k] for k in without} == without
    leaves = jax.tree.leaves(layer_specs(cfg, FULL), is_leaf=lambda x: isinstance(x, ParamSpec))
    layer = sum(int(np.prod(s.shape)) for s in leaves) - (cfg.num_experts - cfg.num_experts_per_tok) * 3 * H * \
        cfg.moe_intermediate_size
    attention = 6 * cfg.num_attention_heads * cfg.head_dim * T
    assert with_mtp["mtp_layers"] == 6 * (2 * H * H + 3 * H + layer) + attention  # fc, its 3 norms, one layer
    assert with_mtp["mtp_lm_head"] == with_mtp["lm_head"] == 6 * V * H
    assert metrics.model_flops_per_token(cfg, T, mtp=True) == sum(with_mtp.values())


def test_remat_factor_counts_each_part_as_often_as_the_step_recomputes_it():
    from a1jax import model
    from a1jax.train import metrics
    import dataclasses
    full = model.presets.qwen35_35b_a3b(remat_policy="full")
    assert planner.remat_factor(full, 4096, mtp=False) == pytest.approx(4 / 3)  # layers and LM-head chunks alike
    parts = metrics.model_flops_breakdown(full, 4096, mtp=True)
    want = (4 / 3 * (parts["layers"] + parts["attention"] + parts["lm_head"] + parts["mtp_lm_head"])
            + parts["mtp_layers"]) / sum(parts.values())
    assert planner.remat_factor(full, 4096, mtp=True) == pytest.approx(want) and want < 4 / 3
    none = dataclasses.replace(full, remat_policy="none")
    parts = metrics.model_flops_breakdown(none, 4096)
    assert planner.remat_factor(none, 4096, mtp=False) == pytest.approx(
        (parts["layers"] + parts["attention"] + 4 / 3 * parts["lm_head"]) / sum(parts.values()))
    parts = metrics.model_flops_breakdown(full, 4096)
    assert planner.remat_factor(dataclasses.replace(full, remat_policy="save_attention"), 4096, mtp=False) == \
        pytest.approx((4 / 3 * (parts["layers"] + parts["lm_head"]) + parts["attention"]) / sum(parts.values()))
    assert planner.remat_factor(dataclasses.replace(full, remat_policy="dots"), 4096, mtp=False) is None


def test_a_step_that_trains_mtp_plans_against_an_analytic_count_with_the_mtp_module():
    exp = tiny_experiment(mesh=dict(data=1), num_experts=0, num_experts_per_tok=0, shared_expert_intermediate_size=0,
                          intermediate_size=96, mtp_num_hidden_layers=1, remat_policy="full")
    exp.config.train.mtp_loss_coef = 0.1
    f = planner.plan(exp, devices=jax.devices()[:1])["flops"]
    assert f["trains_mtp"] and 1.0 < f["remat_factor"] < 4 / 3
    assert 1.0 <= f["ratio_program_remat_deltanet"] <= 1.3, f  # as without MTP: the module's work is all counted
