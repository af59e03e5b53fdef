"""`a1jax plan --topology v5p-512`: the train step compiled by the TPU compiler for a real TPU topology, on a machine
without TPUs (ahead-of-time compilation, as MaxText's train_compile and AXLearn's AOT do).

    pip install -e .[tpu-aot]          # libtpu: the TPU compiler, usable without a TPU
    a1jax plan --config experiments/agents_a1_sft.py --topology v5p-512 [--slices 2] [--json plan.json]
    pip install -e .[gpu-aot]          # jax's CUDA plugin: XLA:GPU, usable without a GPU
    a1jax plan --config experiments/agents_a1_sft.py:h100-64 --topology h100-64

GPUs: the CUDA plugin builds a deviceless topology (`topology="slices x hosts x GPUs per host"`) from an XLA
GpuTargetConfig that `gpu_target_config` writes from the datasheet (SMs, clocks, memory); XLA:GPU then compiles the
step, Pallas kernels through Triton, and reports its buffer assignment. It gives no cost analysis without a device,
so the GPU roofline uses the planner's FLOP count and no memory-traffic bound.

`jax.experimental.topologies.get_topology_desc` describes the topology's chips as JAX devices; the step is built
exactly as the trainer builds it (`a1jax.train.build.build`) on those devices, traced with the kernels targeting TPU
(`kernels.backend.target_platform("tpu")`: "auto" picks the Pallas TPU kernels and Mosaic compiles them), lowered and
compiled by libtpu's XLA:TPU. Nothing runs and no array is allocated. What the figures are:

- Memory per device: XLA:TPU's buffer assignment of this program for this chip (arguments, outputs, donated/aliased,
  temporaries), the same figures `compiled.memory_analysis()` gives on a TPU VM. Peak = arguments + outputs -
  aliased + temporaries. For stage 3 (config.stage "opd") the local teachers' parameters, resident beside the step on
  the student's mesh, are added (each assumed the student's architecture and dtype); the total is checked against the
  chip's HBM with a 5% headroom. It does not include the runtime's own reservations or fragmentation, nor anything
  else outside the step (the teachers' scoring pass, rollouts and their KV cache, checkpoint copies).
- FLOPs: XLA:TPU's `cost_analysis()` per device, which counts each loop body once; the compiled module's dots times
  the trips of their loops, Mosaic kernels at their cost estimates (`a1jax.plan.hlo_dot_flops`); the planner's own
  count of the traced program
  (`a1jax.plan.program_flops`, Pallas kernels by their grid or cost estimate) and the analytic 6·N_active count. A Pallas
  kernel is an opaque `tpu_custom_call` to XLA: the compiler's count includes it only through the kernel's
  `pl.CostEstimate`, if it has one ("custom calls" says how many have one).
- Roofline: max(FLOPs / peak bf16 FLOP/s, bytes accessed / HBM bandwidth) per chip, a lower bound on the step time
  (it ignores ICI/DCN communication, imperfect overlap, and kernel efficiency), and the MFU it would imply for the
  analytic FLOPs. A real step is slower.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import time

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Chip:
    """Datasheet figures of one TPU chip (cloud.google.com/tpu/docs/<generation>)."""
    kind: str
    hbm_bytes: float
    peak_bf16_flops: float
    hbm_bytes_per_s: float
    cores_in_name: int  # TensorCores per chip: the N of a `vX-N` accelerator type counts cores for v4 and v5p
    dims: int  # 2D (v5e, v6e) or 3D (v4, v5p) torus; 0 for GPUs (hosts x GPUs per host)
    platform: str = "tpu"
    gpu: dict | None = None  # GPUs: the device description XLA:GPU compiles for (gpu_target_config)


CHIPS = {
    "v4": Chip("TPU v4", 32e9, 275e12, 1228e9, 2, 3),
    "v5p": Chip("TPU v5p", 95e9, 459e12, 2765e9, 2, 3),
    "v5e": Chip("TPU v5e", 16e9, 197e12, 819e9, 1, 2),
    "v6e": Chip("TPU v6e", 32e9, 918e12, 1640e9, 1, 2),
}
# NVIDIA datasheets: H100 SXM 80 GB, 989 TFLOP/s dense bf16, 3.35 TB/s; H200 141 GB, 4.8 TB/s. `gpu` holds what
# XLA:GPU needs to compile without the device (SMs, clocks, memory, shared memory, compute capability).
_HOPPER = dict(core_count=132, clock_rate_ghz=1.98, shared_memory_per_block_optin=232448,
               shared_memory_per_core=233472, l2_cache_size=52428800, compute_capability=(9, 0))
CHIPS.update({
    "h100": Chip("NVIDIA H100 80GB HBM3", 80e9, 989e12, 3.35e12, 1, 0, "cuda",
                 dict(_HOPPER, device_memory_size=84942979072, memory_bandwidth=3352320000000)),
    "h200": Chip("NVIDIA H200", 141e9, 989e12, 4.8e12, 1, 0, "cuda",
                 dict(_HOPPER, device_memory_size=150754820096, memory_bandwidth=4800000000000)),
})
GPUS_PER_HOST = 8
ALIASES = {"v5litepod": "v5e", "v6lite": "v6e"}
HEADROOM = 0.05  # the plan fits when the peak leaves at least this fraction of HBM free


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as given, e.g. "v5p-512"
    generation: str  # key of CHIPS
    shape: tuple[int, ...]  # chips per slice along each torus axis
    slices: int

    @property
    def chip(self) -> Chip:
        return CHIPS[self.generation]

    @property
    def chips(self) -> int:
        return math.prod(self.shape) * self.slices

    @property
    def topology_name(self) -> str:  # what libtpu calls it: "v5p:4x8x8"; GPUs: slices x hosts x GPUs per host
        if self.chip.platform != "tpu":
            return f"{self.slices}x{self.shape[0]}x{self.shape[1]}"
        return f"{self.generation}:{'x'.join(map(str, self.shape))}"


def _default_shape(chips: int, dims: int) -> tuple[int, ...]:
    """The usual slice shape for a chip count: 2x2x1 for 4 chips (3D), else powers of two as even as possible,
    smallest first (v5p-512 = 256 chips = 4x8x8, v6e-256 = 16x16)."""
    if chips < 1 or chips & (chips - 1):
        raise ValueError(f"{chips} chips is not a power of two; give the shape, e.g. v5p:4x4x6")
    if dims == 3 and chips <= 4:
        return {1: (1, 1, 1), 2: (1, 2, 1), 4: (2, 2, 1)}[chips]
    shape = [1] * dims
    while math.prod(shape) < chips:
        shape[shape.index(min(shape))] *= 2
    return tuple(sorted(shape))


def parse_topology(name: str, slices: int = 1) -> Topology:
    """`--topology`: an accelerator type `vX-N` (v4-8, v5p-512, v5e-16 / v5litepod-16, v6e-256; N counts TensorCores
    for v4 and v5p, chips for v5e and v6e) or an explicit shape `vX:AxBxC` (v5p:4x8x8, v6e:4x4)."""
    m = re.fullmatch(r"(v\d+[a-z]*|h\d00)([-:])([\dx]+)", name.strip().lower())
    gen = ALIASES.get(m.group(1), m.group(1)) if m else None
    if gen not in CHIPS:
        raise ValueError(f"--topology {name!r}: expected vX-N or vX:AxBxC with X in {sorted(CHIPS)} "
                         f"(e.g. v5p-512, v6e-256, v5p:4x8x8)")
    if slices < 1:
        raise ValueError(f"--slices {slices}: expected a positive number of slices")
    chip = CHIPS[gen]
    if chip.platform != "tpu":  # hN00-N: N GPUs, 8 per host
        n = int(m.group(3)) if m.group(2) == "-" else 0
        if n < 1 or (n > GPUS_PER_HOST and n % GPUS_PER_HOST):
            raise ValueError(f"--topology {name!r}: expected {gen}-N with N GPUs, at most {GPUS_PER_HOST} or a "
                             f"multiple of {GPUS_PER_HOST} (hosts of {GPUS_PER_HOST})")
        per_host = min(n, GPUS_PER_HOST)
        return Topology(name=name, generation=gen, shape=(n // per_host, per_host), slices=slices)
    if m.group(2) == ":":
        shape = tuple(int(x) for x in m.group(3).split("x") if x)
        if len(shape) != chip.dims or min(shape) < 1:
            raise ValueError(f"--topology {name!r}: a {gen} slice has {chip.dims} torus dimensions, e.g. "
                             f"{gen}:{'x'.join(['2'] * chip.dims)}")
    else:
        n = int(m.group(3))
        if n % chip.cores_in_name:
            raise ValueError(f"--topology {name!r}: the N of {gen}-N counts TensorCores, {chip.cores_in_name} per "
                             f"chip, so it must be even")
        try:
            shape = _default_shape(n // chip.cores_in_name, chip.dims)
        except ValueError as e:
            raise ValueError(f"--topology {name!r}: {e}") from None
    return Topology(name=name, generation=gen, shape=shape, slices=slices)


def libtpu_available() -> str | None:
    """None when the TPU compiler can be loaded, else why not (for test skips and the CLI's error)."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return "libtpu is not installed (pip install -e .[tpu-aot])"
    return None


def cuda_plugin_available() -> str | None:
    """None when jax's CUDA PJRT plugin (XLA:GPU) is installed, else why not."""
    from a1jax.distributed import module_installed
    if not module_installed("jax_plugins.xla_cuda12"):
        return "the jax CUDA plugin is not installed (pip install -e .[gpu-aot])"
    return None


def gpu_target_config(chip: Chip) -> str:
    """XLA's GpuTargetConfig (text proto) for `chip`: the device description XLA:GPU reads instead of a device."""
    g = chip.gpu
    major, minor = g["compute_capability"]
    info = dict(threads_per_block_limit=1024, threads_per_warp=32, shared_memory_per_block=49152,
                shared_memory_per_core=g["shared_memory_per_core"], threads_per_core_limit=2048,
                core_count=g["core_count"], fpus_per_core=128, block_dim_limit_x=2**31 - 1,
                block_dim_limit_y=65535, block_dim_limit_z=65535, memory_bandwidth=g["memory_bandwidth"],
                l2_cache_size=g["l2_cache_size"], clock_rate_ghz=g["clock_rate_ghz"],
                device_memory_size=g["device_memory_size"],
                shared_memory_per_block_optin=g["shared_memory_per_block_optin"],
                registers_per_core_limit=65536, registers_per_block_limit=65536)
    body = "".join(f"  {k}: {v}\n" for k, v in info.items())
    return (f"gpu_device_info {{\n{body}  cuda_compute_capability {{ major: {major} minor: {minor} }}\n}}\n"
            f'platform_name: "CUDA"\ndnn_version_info {{ major: 9 minor: 8 }}\n'
            f'device_description_str: "{chip.kind}"\n')


def _host_stays_on_cpu():
    """An AOT plan uses no local accelerator: pin the host backend to CPU (unless JAX_PLATFORMS says otherwise or the
    backends are already up), so a plan on a TPU VM or GPU host neither claims its chips nor fails on a busy one."""
    from jax._src import xla_bridge
    if not os.environ.get("JAX_PLATFORMS") and not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")


def topology_devices(topo: Topology) -> list:
    """The topology's chips as JAX devices (one per chip: v4 and v5p run a chip's two cores as one megacore)."""
    from jax.experimental import topologies
    why = libtpu_available() if topo.chip.platform == "tpu" else cuda_plugin_available()
    if why:
        raise ValueError(f"--topology {topo.name}: {why}")
    _host_stays_on_cpu()
    if topo.chip.platform == "tpu":
        # A compile-only client needs neither the TPU lock file (one libtpu process per host) nor the GCE metadata
        # server (TPU VM identity): without these, a second planner or a test worker would fail to load libtpu.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        host = (min(2, topo.shape[0]), min(2, topo.shape[1]), 1)  # 4 chips per host (2x2), as on v4/v5p/v5e VMs
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topo.topology_name,
                                            chips_per_host_bounds=host, num_slices=topo.slices)
    else:
        desc = topologies.get_topology_desc(platform="cuda", topology_name=topo.name,
                                            topology=topo.topology_name, target_config=gpu_target_config(topo.chip))
    devices = list(desc.devices)
    if len(devices) != topo.chips:
        raise ValueError(f"--topology {topo.name}: the compiler describes {len(devices)} devices for "
                         f"{topo.topology_name} x {topo.slices} slices, expected {topo.chips} (one per chip)")
    return devices


# ---- the step's inputs -----------------------------------------------------------------------------------------------

def step_inputs(built, exp, config) -> tuple:
    """Abstract inputs of the stage's step after the state: the batch (with the stage's extra per-token fields) and,
    for "opd", the teacher targets with the top-k width of config.teachers. Shapes as the trainer feeds them."""
    from a1jax import plan
    batch = plan.abstract_batch(built, exp)
    shape = (exp.data.batch_size, exp.data.seq_len)
    f32 = lambda *extra: jax.ShapeDtypeStruct(shape + extra, jnp.float32, sharding=built.batch_sharding)
    stage = config.stage
    if stage == "grpo":
        batch.update(behavior_logp=f32(), advantages=f32())
        if config.grpo.get("kl_coef", 0.0):
            batch["ref_logp"] = f32()
        return (batch,)
    if stage == "opd":
        batch["behavior_logp"] = f32()
        if config.distill.get("reward_coef", 0.0):
            batch["advantages"] = f32()
        ks = {int(t["k"]) for t in config.get("teachers", [])}
        if len(ks) != 1:
            raise ValueError(f"config.teachers: the planner needs one top-k width for all teachers, got {sorted(ks)}")
        k = ks.pop()
        targets = {"topk_ids": jax.ShapeDtypeStruct(shape + (k,), jnp.int32, sharding=built.batch_sharding),
                   "topk_logp": f32(k), "sampled_logp": f32(), "tail_logp": f32(), "valid": f32()}
        if config.distill.get("estimator") == "full":
            raise ValueError("config.distill.estimator='full' materialises [B,T,V] teacher log-probs: not planned")
        return batch, targets
    return (batch,)


def local_teachers(config) -> int:
    """How many stage-3 teachers this process holds (config.teachers entries with a workdir, not a url)."""
    if config.stage != "opd":
        return 0
    return sum(1 for t in config.get("teachers", []) if not dict(t).get("url"))


def num_domains(config) -> int:
    if config.stage == "opd":
        return max(len(config.get("teachers", [])), 1)
    return max(len(config.get("data", {}).get("domains", ()) or ()), 1)


# ---- compile and read back -------------------------------------------------------------------------------------------

KERNEL_TARGETS = {"tpu": ("tpu_custom_call",), "cuda": ("__gpu$xla.gpu.triton", "mosaic_gpu", "mosaic_gpu_v2")}


def custom_calls(hlo_text: str, platform: str = "tpu") -> dict:
    """Pallas kernels in the compiled module (Mosaic `tpu_custom_call`s; Triton or Mosaic GPU calls): how many call
    sites, by kernel name, and how many carry a cost estimate that XLA's cost analysis can use."""
    targets = KERNEL_TARGETS[platform]
    calls, with_cost = {}, 0
    for line in hlo_text.splitlines():
        target = re.search(r'custom_call_target="([^"]+)"', line)
        if not target or target.group(1) not in targets:
            continue
        name = re.match(r"\s*(?:ROOT\s+)?%?([\w\-]+?)(?:\.\d+)?\s*=", line)  # the kernel's name: %moe_gmm_swiglu.107
        key = name.group(1) if name else "?"
        calls[key] = calls.get(key, 0) + 1
        with_cost += bool(re.search(r"cost_estimate|\\\"flops\\\"", line))
    return {"sites": sum(calls.values()), "with_cost_estimate": with_cost, "by_kernel": calls}


@contextlib.contextmanager
def _no_persistent_cache():
    """Keeps jax's persistent compilation cache (tests/conftest.py turns it on) out of AOT compiles: it could only
    store an executable no client here can load, and warn when reading it back."""
    from jax._src import compilation_cache
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # jax decides once per process whether the cache is used
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
        compilation_cache.reset_cache()


def compile_step(exp, config, topo: Topology) -> tuple:
    """(built, traced, compiled, times): the trainer's step for `exp`, compiled by XLA:TPU for `topo`."""
    from kernels import backend
    from a1jax.train.build import build
    times = {}
    t = time.perf_counter()
    devices = topology_devices(topo)
    times["topology_s"] = time.perf_counter() - t
    with backend.target_platform(topo.chip.platform):
        t = time.perf_counter()
        built = build(exp, num_domains=num_domains(config), devices=devices)
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), built.abstract_state,
                             built.state_shardings)
        inputs = step_inputs(built, exp, config)
        times["build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        traced = built.step_fn.trace(state, *inputs)
        times["trace_s"] = time.perf_counter() - t
        t = time.perf_counter()
        lowered = traced.lower()
        times["lower_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with _no_persistent_cache():  # an executable for devices this process has no client for: nothing to reuse
        compiled = compile_lowered(lowered, topo.chip)
    times["compile_s"] = time.perf_counter() - t
    return built, state, inputs, traced, compiled, times


def compile_lowered(lowered, chip: Chip):
    """`lowered.compile()`, with the one error a mismatched toolchain gives (a compiler older than the Pallas kernels
    jax wrote) turned into a line that says what to install."""
    try:
        return lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "Failed to deserialize the Mosaic module" not in str(e):
            raise
        raise RuntimeError(f"{compiler_name(chip)} cannot read the Pallas kernels this jax wrote ({_versions()}; "
                           f"{str(e).splitlines()[0]}): the compiler and jax must come from the same release; "
                           f"`pip install -e .[{'tpu' if chip.platform == 'tpu' else 'gpu'}-aot]` installs the pair "
                           "the plans were made with") from None


def _versions() -> str:
    from importlib import metadata
    found = []
    for name in ("jax", "jaxlib", "libtpu", "jax-cuda12-plugin"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def roofline(flops: float, bytes_accessed: float, chip: Chip, useful_flops: float) -> dict:
    """Lower bound of the step time on one chip and the MFU it would imply for `useful_flops`."""
    t_compute, t_memory = flops / chip.peak_bf16_flops, bytes_accessed / chip.hbm_bytes_per_s
    bound = max(t_compute, t_memory) if math.isfinite(t_memory) else t_compute  # XLA:GPU reports no bytes
    return {"compute_s": t_compute, "memory_s": t_memory, "step_s_lower_bound": bound,
            "bound_by": "memory" if bound > t_compute else "compute",
            "mfu_at_bound": useful_flops / (bound * chip.peak_bf16_flops) if bound else float("nan")}


def plan_topology(exp, config, topo: Topology, dump_hlo: str = "") -> dict:
    """The plan of `exp` compiled for `topo` as a JSON-ready dict (module docstring: what each figure means);
    `dump_hlo`: also write the compiled module's HLO text there."""
    from a1jax import plan as planner
    chip, n = topo.chip, topo.chips
    built, state, inputs, traced, compiled, times = compile_step(exp, config, topo)
    t = time.perf_counter()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}  # XLA:GPU gives none without a device
    hlo = compiled.as_text()
    if dump_hlo:
        with open(dump_hlo, "w") as fh:
            fh.write(hlo)
    prog = planner.program_flops(traced.jaxpr.jaxpr)
    kernels = custom_calls(hlo, chip.platform)
    compiled_flops, unknown_loops = planner.hlo_dot_flops(hlo, kernel_estimates=True)
    times["analysis_s"] = time.perf_counter() - t

    tokens = exp.data.batch_size * exp.data.seq_len
    per_token, remat = planner.analytic_flops(exp, built.ctx)
    analytic = per_token * tokens / n
    xla_flops = float(cost.get("flops", float("nan")))
    xla_bytes = float(cost.get("bytes accessed", float("nan")))
    peak_b = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    params_b = planner._shard_bytes(state.params, built.state_shardings.params)
    # resident beside the step (stage 3): each local teacher's parameters, on the student's mesh with its shardings
    # (a1jax/distill/teachers.py LocalTeacher), assumed the student's architecture and parameter dtype
    teachers_b = local_teachers(config) * params_b
    total_b = peak_b + teachers_b
    opt_b = planner._shard_bytes(state.opt_state, built.state_shardings.opt_state)
    state_b = planner._shard_bytes(state, built.state_shardings)
    input_b = sum(planner._shard_bytes(x, jax.tree.map(lambda a: a.sharding, x)) for x in inputs)
    # compute bound: the largest count (XLA's cost analysis sees each loop body once and kernels only through their
    # estimates; the HLO dot count misses non-matmul work; the planner's count is before SPMD partitioning)
    flops_bound = max(x for x in (xla_flops, prog / n, compiled_flops) if math.isfinite(x))
    return {
        "config": {"topology": topo.name, "topology_name": topo.topology_name, "slices": topo.slices, "devices": n,
                   "device_kind": chip.kind, "mesh": {k: int(v) for k, v in built.mesh.shape.items()},
                   "stage": config.stage, "batch_size": exp.data.batch_size, "seq_len": exp.data.seq_len,
                   "microbatches": int(config.train.microbatches), "remat_policy": exp.model.remat_policy,
                   "local_teachers": local_teachers(config),
                   "moe_impl": exp.model.moe_impl, "attention_impl": exp.model.attention_impl,
                   "deltanet_impl": exp.model.deltanet_impl, "compiled_on": compiler_name(chip) + " (ahead of time, no device)"},
        "chip": dataclasses.asdict(chip),
        "memory_per_device": {
            "params": params_b, "optimizer_state": opt_b, "state": state_b, "inputs": input_b,
            "arguments": mem.argument_size_in_bytes, "outputs": mem.output_size_in_bytes,
            "aliased": mem.alias_size_in_bytes, "temporaries": mem.temp_size_in_bytes,
            "generated_code": mem.generated_code_size_in_bytes, "peak": peak_b,
            "teachers_resident": teachers_b, "total": total_b,
            "hbm": chip.hbm_bytes, "headroom": 1.0 - total_b / chip.hbm_bytes},
        "fits": total_b <= (1.0 - HEADROOM) * chip.hbm_bytes,
        "flops_per_device": {"analytic": analytic, "trains_mtp": built.ctx.trains_mtp, "remat_factor": remat,
                             "program": prog / n,
                             "xla_cost_analysis": xla_flops, "compiled": compiled_flops,
                             "ratio_compiled_remat": compiled_flops / (analytic * remat) if remat else None,
                             "compiled_loops_without_trip_count": unknown_loops, "bytes_accessed": xla_bytes},
        "custom_calls": kernels,
        "roofline": roofline(flops_bound, xla_bytes, chip, analytic),
        "times": times,
    }


def compiler_name(chip: Chip) -> str:
    return "XLA:TPU (libtpu)" if chip.platform == "tpu" else "XLA:GPU (jax CUDA plugin)"


def _gb(x) -> str:
    return f"{x / 1e9:9.2f} GB"


def format_report(p: dict) -> str:
    c, m, f, r, k = p["config"], p["memory_per_device"], p["flops_per_device"], p["roofline"], p["custom_calls"]
    mesh = " x ".join(f"{a}={s}" for a, s in c["mesh"].items())
    t = p["times"]
    verdict = "FITS" if p["fits"] else "DOES NOT FIT"
    xla = "XLA:TPU" if p["chip"]["platform"] == "tpu" else "XLA:GPU"
    lines = [
        f"{c['topology']} ({c['topology_name']} x {c['slices']} slice(s), {c['devices']} x {c['device_kind']}), "
        f"mesh {mesh}",
        f"stage {c['stage']}, batch {c['batch_size']} x {c['seq_len']} tokens in {c['microbatches']} microbatch(es), "
        f"remat={c['remat_policy']}, impls moe={c['moe_impl']} attention={c['attention_impl']} "
        f"deltanet={c['deltanet_impl']}",
        f"compiled by {c['compiled_on']}; time: topology {t['topology_s']:.1f}s  build {t['build_s']:.1f}s  "
        f"trace {t['trace_s']:.1f}s  lower {t['lower_s']:.1f}s  compile {t['compile_s']:.1f}s  "
        f"analysis {t['analysis_s']:.1f}s",
        "",
        f"memory per device ({xla} buffer assignment)",
        f"  parameters                   {_gb(m['params'])}   (shard shapes)",
        f"  optimizer state              {_gb(m['optimizer_state'])}",
        f"  step inputs                  {_gb(m['inputs'])}",
        f"  arguments                    {_gb(m['arguments'])}",
        f"  outputs                      {_gb(m['outputs'])}   of which aliased to arguments {m['aliased'] / 1e9:.2f} GB",
        f"  temporaries                  {_gb(m['temporaries'])}",
        f"  peak (args+out-alias+temp)   {_gb(m['peak'])}",
        *([f"  {'+ ' + str(c['local_teachers']) + ' teachers' + chr(39) + ' parameters':29s}"
           f"{_gb(m['teachers_resident'])}   (resident beside the step, the student's shardings)"]
          if m["teachers_resident"] else []),
        f"  total                        {_gb(m['total'])}   of {m['hbm'] / 1e9:.0f} GB HBM: "
        f"{m['total'] / m['hbm']:.1%}, headroom {m['headroom']:.1%} -> {verdict} (needs >= {HEADROOM:.0%} headroom)",
        "",
        "FLOPs per device per step",
        f"  analytic 6*N_active + attention   {f['analytic']:11.3e}"
        + ("   (MTP module and its LM-head pass included)" if f["trains_mtp"] else ""),
        f"  planner (traced program)          {f['program']:11.3e}   ({f['program'] / f['analytic']:.2f} x analytic)",
        f"  {xla} HLO dots x loop trips     {f['compiled']:11.3e}   ({f['compiled'] / f['analytic']:.2f} x analytic; "
        + ("Mosaic kernels at their cost estimates" if p["chip"]["platform"] == "tpu" else
           "a floor: cuBLAS GEMMs and Triton kernels are custom calls it does not count")
        + f"; {f['compiled_loops_without_trip_count']} loops without a trip count, counted once)"
        + (f"\n  {'':34s}{f['ratio_compiled_remat']:.3f} x analytic x remat {f['remat_factor']:.3f} (the recompute "
           "the step's remat does legitimately)" if f["remat_factor"] else ""),
        f"  {xla} cost_analysis             {f['xla_cost_analysis']:11.3e}   "
        f"({f['xla_cost_analysis'] / f['analytic']:.2f} x analytic; each loop body counted once)",
        f"  {xla} bytes accessed            {f['bytes_accessed']:11.3e} B (each loop body counted once)",
        f"  kernel custom calls (Mosaic/Triton) {k['sites']} call sites, {k['with_cost_estimate']} with a cost "
        f"estimate: {', '.join(f'{n} x{c}' for n, c in sorted(k['by_kernel'].items()))}",
        "",
        f"roofline per chip ({p['chip']['peak_bf16_flops'] / 1e12:.0f} TFLOP/s bf16, "
        f"{p['chip']['hbm_bytes_per_s'] / 1e9:.0f} GB/s HBM)",
        f"  compute {r['compute_s']:.3f} s (the largest of the three FLOP counts above), memory {r['memory_s']:.3f} s "
        f"(XLA's bytes accessed)",
        f"  -> step >= {r['step_s_lower_bound']:.3f} s ({r['bound_by']} bound), MFU at that bound "
        f"{r['mfu_at_bound']:.1%}",
        "  (a lower bound: no ICI/DCN communication, no overlap losses, kernels at peak, loop bytes counted once)",
    ]
    return "\n".join(lines)
