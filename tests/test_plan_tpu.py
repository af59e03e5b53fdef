"""`a1jax plan --topology`: the train step compiled by XLA:TPU (libtpu, no TPU needed) for a TPU topology, with the
Pallas kernels compiled by Mosaic, and memory figures that add up."""
import math
import os

import jax
import jax.numpy as jnp
import pytest

from a1jax import aot
from a1jax import plan as planner, stages
from a1jax.train import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.py")
TINY = dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, moe_intermediate_size=32,
            shared_expert_intermediate_size=32, loss_chunk_size=256, deltanet_chunk_size=64, remat_policy="full",
            moe_impl="pallas_tpu", attention_impl="pallas_tpu", deltanet_impl="pallas_tpu")


@pytest.mark.parametrize("name,topology_name,chips", [
    ("v5p-8", "v5p:2x2x1", 4), ("v5p-512", "v5p:4x8x8", 256), ("v4-64", "v4:2x4x4", 32),
    ("v5e-16", "v5e:4x4", 16), ("v5litepod-256", "v5e:16x16", 256), ("v6e-8", "v6e:2x4", 8),
    ("v5p:4x4x6", "v5p:4x4x6", 96), ("h100-64", "1x8x8", 64), ("h200-4", "1x1x4", 4)])
def test_accelerator_types_name_their_slice_shape(name, topology_name, chips):
    t = aot.parse_topology(name)
    assert (t.topology_name, t.chips) == (topology_name, chips)
    assert aot.parse_topology(name, slices=2).chips == 2 * chips


@pytest.mark.parametrize("name,says", [("v7-8", "v4"), ("v5p-7", "even"), ("v5p-24", "power of two"),
                                       ("v6e:4x4x4", "2 torus dimensions"), ("h100-12", "multiple of 8")])
def test_bad_topology_names_say_what_is_expected(name, says):
    with pytest.raises(ValueError, match=says):
        aot.parse_topology(name)


def test_a_compiler_older_than_the_kernels_says_what_to_install():
    """libtpu 0.0.51 under jax 0.12.1 (CI, 2026-12-06): Mosaic version 20 against at most 18, a 180-line dump."""
    class Lowered:
        def compile(self):
            raise jax.errors.JaxRuntimeError("INTERNAL: Failed to deserialize the Mosaic module: INTERNAL: Unsupported "
                                             "version: expected <= 18 but got 20\n\nat location: loc(unknown)")
    with pytest.raises(RuntimeError, match=r"XLA:TPU \(libtpu\) cannot read the Pallas kernels this jax wrote \(jax "
                       r".*expected <= 18 but got 20\): .*pip install -e \.\[tpu-aot\]"):
        aot.compile_lowered(Lowered(), aot.parse_topology("v5p-8").chip)

    class Other:
        def compile(self):
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: out of memory")
    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED"):
        aot.compile_lowered(Other(), aot.parse_topology("v5p-8").chip)


def _require_libtpu():
    why = aot.libtpu_available()
    if why:
        if os.environ.get("A1JAX_REQUIRE_LIBTPU") == "1":
            pytest.fail(f"A1JAX_REQUIRE_LIBTPU=1 but {why}", pytrace=False)
        pytest.skip(why)


@pytest.fixture(scope="module")
def tiny_v5p_plan():
    """A tiny MoE model with all three Pallas TPU kernels, fsdp=2 x expert=2 on a v5p-8 (4 chips)."""
    _require_libtpu()
    c = experiment.load(QUICKSTART)
    c.model.overrides = dict(TINY)
    c.data.seq_len, c.data.batch_size, c.data.eval_batch_size = 256, 4, 4
    c.mesh = dict(data=1, fsdp=2, expert=2, tensor=1, sequence=1)
    return aot.plan_topology(stages.validate(c, check_vocabulary=False), c, aot.parse_topology("v5p-8"))


def test_tiny_model_compiles_for_v5p_with_mosaic_kernels(tiny_v5p_plan):
    p = tiny_v5p_plan
    assert p["config"]["devices"] == 4 and p["config"]["device_kind"] == "TPU v5p"
    kernels = p["custom_calls"]["by_kernel"]  # Mosaic custom calls by kernel name
    # flash attention and chunked Gated DeltaNet; at this width (32) the grouped matmul has no 128-lane output block
    # and falls back to XLA's ragged dot, itself a Mosaic kernel (the 35B step compiles moe_gmm: docs/sharding.md)
    for family in ("flash_", "gdn_", "ragged-dot"):
        assert any(name.startswith(family) for name in kernels), kernels


def test_tpu_memory_figures_add_up_to_the_state(tiny_v5p_plan):
    m = tiny_v5p_plan["memory_per_device"]
    assert m["params"] > 0 and m["temporaries"] > 0
    # the arguments are the sharded train state plus the batch, in TPU layouts: the last two dims of every array are
    # padded to (8, 128) tiles, which for this model's 32- and 64-wide dims is up to 4x; the donated state comes back
    # aliased to its argument buffers
    exact = m["state"] + m["inputs"]
    assert exact <= m["arguments"] <= 4 * exact, m
    assert m["state"] <= m["aliased"] <= m["arguments"], m
    assert m["peak"] == m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"]
    assert tiny_v5p_plan["fits"]


def test_tpu_flops_and_roofline_are_reported(tiny_v5p_plan):
    f, r = tiny_v5p_plan["flops_per_device"], tiny_v5p_plan["roofline"]
    assert f["xla_cost_analysis"] > 0 and f["bytes_accessed"] > 0 and f["program"] >= f["analytic"] > 0
    # the TPU HLO's dots (convolutions, batch dims as dilated windows) and the Mosaic kernels at their cost estimates
    # add up to the traced program's count per device (measured: 0.9994 of it)
    assert f["compiled_loops_without_trip_count"] == 0
    assert f["compiled"] == pytest.approx(f["program"], rel=0.02), f
    assert r["step_s_lower_bound"] == max(r["compute_s"], r["memory_s"]) > 0
    assert 0 < r["mfu_at_bound"] <= 1


def test_hlo_dot_count_reads_tpu_hlo():
    """XLA:TPU writes dots as convolutions (dim_labels=bf_io->bf) with TPU tile layouts and records no trip counts:
    a scan of 6 [64, 512] x [512, 512] products per device, its transpose (6 more) and one outside loop = 13."""
    _require_libtpu()
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(aot.topology_devices(aot.parse_topology("v5p-8")), ("d",))

    def f(x, ws):
        h, _ = jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, ws)
        return (h @ ws[0]).sum()

    x = jax.ShapeDtypeStruct((256, 512), jnp.bfloat16, sharding=NamedSharding(mesh, P("d", None)))
    ws = jax.ShapeDtypeStruct((6, 512, 512), jnp.bfloat16, sharding=NamedSharding(mesh, P()))
    compiled = jax.jit(jax.grad(f)).trace(x, ws).lower().compile()
    hlo = compiled.as_text()
    assert "convolution(" in hlo and "known_trip_count" not in hlo  # the forms the count must read
    flops, unknown = planner.hlo_dot_flops(hlo)
    assert (flops, unknown) == (13 * 2 * 64 * 512 * 512, 0)
    assert compiled.cost_analysis()["flops"] < flops / 2  # XLA counts each loop body once


def test_stage_3_plans_count_the_resident_teachers():
    distill = os.path.join(REPO, "experiments", "agents_a1_distill.py")
    assert aot.local_teachers(experiment.load(distill)) == 6
    c = experiment.load(distill + ":tiny")
    c.teachers = [dict(t, url="http://teacher:8000") if i else t for i, t in enumerate(c.teachers)]
    assert aot.local_teachers(c) == 1  # a remote teacher holds no memory here
    assert aot.local_teachers(experiment.load(os.path.join(REPO, "experiments", "agents_a1_teacher.py") +
                                              ":domain=search")) == 0


def test_tiny_model_compiles_for_h100_without_a_gpu():
    """XLA:GPU from jax's CUDA plugin (the gpu-aot extra, not installed in CI): a deviceless 4 x H100 compile of the
    tiny model with the Triton kernels; its memory figures hold the sharded state, and it gives no cost analysis."""
    why = aot.cuda_plugin_available()
    if why:
        pytest.skip(why)
    c = experiment.load(QUICKSTART)
    # the DeltaNet kernel stays XLA: Triton wants power-of-two blocks, and this model's DeltaNet value head dim is 24
    c.model.overrides = dict(TINY, moe_impl="pallas_gpu", attention_impl="pallas_gpu", deltanet_impl="xla")
    c.data.seq_len, c.data.batch_size, c.data.eval_batch_size = 256, 4, 4
    c.mesh = dict(data=1, fsdp=2, expert=2, tensor=1, sequence=1)
    p = aot.plan_topology(stages.validate(c, check_vocabulary=False), c, aot.parse_topology("h100-4"))
    m = p["memory_per_device"]
    assert p["config"]["device_kind"] == "NVIDIA H100 80GB HBM3" and p["custom_calls"]["sites"] > 0
    assert m["state"] <= m["arguments"] and m["temporaries"] > 0 and p["fits"]
    assert math.isnan(p["flops_per_device"]["xla_cost_analysis"])
