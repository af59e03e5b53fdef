"""`a1jax plan`: will this experiment's train step fit, and does it do the FLOPs we expect? Answered without hardware.

    a1jax plan --config experiments/agents_a1_sft.py:h100-64 --devices 64 --platform gpu [--json plan.json]

The planner builds the experiment exactly as the trainer does (`a1jax.train.build.build`), then traces, lowers and
compiles the jitted train step on abstract inputs (ShapeDtypeStructs carrying their shardings), so no parameter memory
is ever allocated. The compile is an XLA:CPU SPMD compile of the same program on N virtual CPU devices.

What each number is, and how far to trust it:

- Parameter, optimizer-state and batch bytes per device: exact, from the shard shapes of the NamedShardings.
- Compiled argument / output / temporary bytes: XLA:CPU's buffer assignment. The argument bytes are exact for any
  backend; temporaries are what XLA:CPU would need and can differ on TPU/GPU (other fusion, other kernels: a Pallas
  kernel on device replaces the XLA fallback that CPU compiles). Saved activations are estimated separately from
  jax's saved residuals of the decoder forward, divided evenly over the batch and sequence shards.
- Kernels: with --platform gpu/tpu, every model `*_impl` left at "auto" becomes that platform's Pallas kernels
  (`resolve_impls`), interpreted on the CPU host. A Pallas kernel counts at its `pl.CostEstimate`, the blocks it
  runs (causal block skipping, the row tiles that hold rows), in the program and the compiled count alike.
- Program FLOPs: counted on the traced jaxpr of the step (dot_general, ragged_dot, Pallas kernels' estimates),
  scan bodies times their length, shard_map bodies times their shards. Platform independent: `ragged_dot` counts
  2·M·K·N, what a grouped-matmul kernel does. Per device = global / devices (assumes the work is partitioned).
- Compiled FLOPs: XLA's `cost_analysis()` counts a while-loop body once, so a scan over 10 blocks is under-counted
  10x; the planner therefore also counts the dots of the compiled HLO itself, times the known trip count of every
  enclosing loop. On XLA:CPU `ragged_dot` is lowered to a dense matmul over *all* experts (a masked [M, E·K] lhs),
  so for MoE models the compiled count (and the CPU temporaries) are E times the routed work; work the SPMD
  partitioner cannot split is replicated on every device. Compiled above program FLOPs flags both, instead of
  hiding them; "largest arrays" shows where the temporaries come from.
- Analytic FLOPs: `a1jax.train.metrics.model_flops_per_token` (6·N_active + causal attention 6·T·heads·head_dim per
  attention layer, per token; the MTP module and the LM head's second pass when the step trains MTP), plus the
  Gated DeltaNet chunk cost below, reported separately. `remat_factor` is the recompute the step legitimately does
  on top: the layers' forward again under `remat_policy="full"` (4/3 of them), the LM-head chunks' logits always
  (4/3), the MTP layer never.

Cross-platform lowering (`.trace(...).lower(lowering_platforms=("tpu",))`) was tried for FLOPs: its cost analysis
counts a `ragged_dot` as a few thousand FLOPs and Pallas kernels as opaque custom calls, so it adds nothing trustworthy
and is not used.
"""
from __future__ import annotations

import functools
import math
import os
import re
import time

import jax
import jax.numpy as jnp

# HBM per device, bytes (datasheets); keys are matched against --device_kind like metrics.PEAK_FLOPS.
HBM_BYTES = {"tpu v5p": 95e9, "tpu v6e": 32e9, "h100": 80e9, "h200": 141e9}
DEFAULT_KIND = {"tpu": "tpu v5p", "gpu": "h100"}
# Training FLOPs are forward + backward (2x); a recomputed forward adds 1/3. How often the decoder layers' forward
# runs, per part of metrics.model_flops_breakdown, under each remat policy the planner models (the others save what
# XLA decides: dots, dots_no_batch, save_mixer_out).
REMAT_PARTS = {"none": {"layers": 1.0, "attention": 1.0}, "full": {"layers": 4 / 3, "attention": 4 / 3},
               "save_attention": {"layers": 4 / 3, "attention": 1.0}}
LOSS_REMAT = 4.0 / 3.0  # map_logit_chunks recomputes each chunk's logits in the backward (above a size), any policy
OVERCOMPUTE_WARNING = 1.5  # compiled / program FLOPs above this: replicated work or a dense MoE dispatch


# ---- FLOP counting ---------------------------------------------------------------------------------------------------

def remat_factor(cfg, seq_len: int, mtp: bool, rows: int = 0) -> float | None:
    """The step's legitimate FLOPs over the analytic count: every part of `metrics.model_flops_breakdown` weighted by
    how often its forward runs. The decoder layers per `remat_policy` (REMAT_PARTS; None for a policy it does not
    model), the LM-head chunks recomputed (LOSS_REMAT) unless a microbatch of `rows` rows keeps its logits
    (`losses.keeps_logits`; rows = 0: recomputed), the MTP module's layers never (they run outside the remat'ed
    layer scan)."""
    from a1jax.model import losses
    from a1jax.train import metrics
    if cfg.remat_policy not in REMAT_PARTS:
        return None
    head = 1.0 if rows and losses.keeps_logits(rows, seq_len, cfg.loss_chunk_size, cfg.vocab_size) else LOSS_REMAT
    weight = {**REMAT_PARTS[cfg.remat_policy], "lm_head": head, "mtp_layers": 1.0, "mtp_lm_head": head}
    parts = metrics.model_flops_breakdown(cfg, seq_len, mtp)
    return sum(weight[k] * v for k, v in parts.items()) / sum(parts.values())


def analytic_flops(exp, ctx) -> tuple[float, float | None]:
    """(analytic FLOPs per token, remat factor) of the step `ctx` builds for experiment `exp`."""
    from a1jax.train import metrics
    return (metrics.model_flops_per_token(exp.model, exp.data.seq_len, ctx.trains_mtp),
            remat_factor(exp.model, exp.data.seq_len, ctx.trains_mtp, exp.data.batch_size // ctx.microbatches))


def _sub_jaxprs(params):
    from jax.extend import core as jex
    for key, value in params.items():
        for v in (value if isinstance(value, (tuple, list)) else (value,)):
            if isinstance(v, jex.ClosedJaxpr):
                yield key, v.jaxpr
            elif isinstance(v, jex.Jaxpr):
                yield key, v


def _dot_flops(lhs_shape, rhs_shape, rhs_skip) -> float:
    """2 x every lhs element x every free rhs column: exact for dot_general and all three ragged_dot modes."""
    return 2.0 * math.prod(lhs_shape) * math.prod(d for i, d in enumerate(rhs_shape) if i not in rhs_skip)


def _where(eqn) -> str:
    """`file.py:function` of the innermost user (non-jax) frame that emitted `eqn`."""
    from jax._src import source_info_util  # the frame filter jax uses in its own error messages
    frame = source_info_util.user_frame(eqn.source_info.traceback)
    return f"{os.path.basename(frame.file_name)}:{frame.function_name}" if frame else "?"


def program_flops(jaxpr, unknown_loops: list | None = None, by_source: dict | None = None, mult: float = 1,
                  kernels: dict | None = None) -> float:
    """Matmul FLOPs of a jaxpr (global, all devices): dot_general, ragged_dot_general and Pallas kernels.

    Scans count `length` times, shard_map bodies once per shard, cond the costliest branch. A while loop has no static
    trip count: its body counts once and it is appended to `unknown_loops`. `by_source` collects the FLOPs by the
    user function that emitted them, `kernels` those of the Pallas calls with a cost estimate by kernel name. A
    ragged_dot counts all lhs rows, padding rows of a worst-case buffer included; a Pallas kernel counts its
    `pl.CostEstimate` (the blocks and row tiles it runs), or without one its body once per grid step.
    """
    total = 0.0
    for eqn in jaxpr.eqns:
        name, p = eqn.primitive.name, eqn.params
        flops = None
        if name == "dot_general":
            (_, rc), (_, rb) = p["dimension_numbers"]
            flops = _dot_flops(eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, set(rc) | set(rb))
        elif name == "ragged_dot_general":
            dn = p["ragged_dot_dimension_numbers"]
            (_, rc), (_, rb) = dn.dot_dimension_numbers
            skip = set(rc) | set(rb) | set(dn.rhs_group_dimensions)
            flops = _dot_flops(eqn.invars[0].aval.shape, eqn.invars[1].aval.shape, skip)
        elif name == "pallas_call" and getattr(p.get("cost_estimate"), "flops", None):
            flops = float(p["cost_estimate"].flops)
            if kernels is not None:
                kernels[p.get("name") or "?"] = kernels.get(p.get("name") or "?", 0.0) + flops * mult
        if flops is not None:
            total += flops
            if by_source is not None:
                key = _where(eqn)
                by_source[key] = by_source.get(key, 0.0) + flops * mult
            continue
        subs = list(_sub_jaxprs(p))
        inner = lambda j, m=1: program_flops(j, unknown_loops, by_source, mult * m, kernels)
        if name == "pallas_call":  # no cost estimate: the kernel body once per grid step
            steps = math.prod(g if isinstance(g, int) else 1 for g in p["grid_mapping"].grid)
            total += steps * inner(p["jaxpr"], steps)
        elif name == "cond":  # every branch is counted into by_source; the total takes the costliest
            total += max(inner(j) for _, j in subs)
        elif name == "while":
            if unknown_loops is not None:
                unknown_loops.append(str(eqn.source_info.name_stack) or "while")
            total += inner(p["body_jaxpr"].jaxpr)
        elif subs:
            m = 1
            if name == "scan":
                m = p["length"]
            elif name == "shard_map":
                mesh = p["mesh"]
                manual = p.get("manual_axes") or set(mesh.axis_names) - set(p.get("auto", ()))
                m = math.prod(mesh.shape[a] for a in manual)
            total += m * sum(inner(j, m) for _, j in subs)
    return total


_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]")
_ARG = re.compile(r"(?:\w+\[([\d,]*)\]\S*\s+)?%?([\w.\-]+)")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CONST = re.compile(r"^\s*%?([\w.\-]+)\s*=\s*[su]\d+\[\]\S*\s+constant\((-?\d+)\)")
_COMPARE = re.compile(r"^\s*ROOT\s.*\scompare\(%?([\w.\-]+), %?([\w.\-]+)\), direction=(LT|GT|LE|GE|NE)")
_OP = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([\w\-]+)\((.*?)\)(?:,|$)")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8}


def _dims(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _operand_shapes(args: str, shapes: dict) -> list:
    """Shapes of an op's operands, from inline types (`f32[8,4]{1,0} %x`; TPU layouts `{1,0:T(8,128)}` included) or
    from the operands' definitions in the same computation."""
    out = []
    for a in args.split(", "):
        m = _ARG.match(a.strip())
        out.append(_dims(m.group(1)) if m and m.group(1) is not None else shapes.get(m.group(2)) if m else None)
    return out


def _op_flops(line: str, out_dims: list[int], shapes: dict) -> float:
    """FLOPs of a `dot` (contracting dims) or of a `convolution` (XLA:TPU writes most dots as convolutions with
    dim_labels like bf_io->bf: 2 x output elements x the kernel's input features x the window taps), else 0."""
    dot = re.search(r"\sdot\((.*?)\)(?:,|$)", line)
    if dot:
        lhs = _operand_shapes(dot.group(1), shapes)[0]
        contract = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
        k = math.prod(lhs[i] for i in _dims(contract.group(1))) if lhs and contract else 0
        return 2.0 * math.prod(out_dims) * k
    conv = re.search(r"\sconvolution\((.*?)\)(?:,|$)", line)
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", line)
    if not (conv and labels):
        return 0.0
    lhs, rhs = (_operand_shapes(conv.group(1), shapes) + [None, None])[:2]
    ll, rl, ol = labels.groups()
    if not lhs or not rhs or len(lhs) != len(ll) or len(rhs) != len(rl) or len(out_dims) != len(ol):
        return 0.0
    window = re.search(r"window=\{([^}]*)\}", line)
    attrs = dict(kv.split("=", 1) for kv in window.group(1).split()) if window else {}
    spatial = sorted(c for c in ol if c.isdigit())
    field = lambda key, default: ([int(x) for x in attrs[key].split("x")] if key in attrs
                                  else [default] * len(spatial))
    size = [int(x) for x in attrs["size"].split("x")] if "size" in attrs else [rhs[rl.index(c)] for c in spatial]
    stride, lhs_dilate, rhs_dilate = field("stride", 1), field("lhs_dilate", 1), field("rhs_dilate", 1)
    pad = [int(x.split("_")[0]) for x in attrs["pad"].split("x")] if "pad" in attrs else [0] * len(spatial)
    pairs = 1  # (output position, window tap) pairs that meet a real lhs element, per spatial dim (exact MACs: no
    for k, c in enumerate(spatial):  # padding, no holes of a dilated lhs; XLA:TPU writes a dot's batch dims so)
        n, o, d = lhs[ll.index(c)], out_dims[ol.index(c)], lhs_dilate[k]
        hits = 0
        for p in range(o):
            for t in range(size[k]):
                x = p * stride[k] + t * rhs_dilate[k] - pad[k]
                hits += 0 <= x <= (n - 1) * d and x % d == 0
        pairs *= hits
    rest = math.prod(out_dims) // max(math.prod(out_dims[ol.index(c)] for c in spatial), 1)
    return 2.0 * rest * pairs * rhs[rl.index("i")]


def _trip_from_condition(comps: dict, caller: str, body: str, cond: str, init: str | None) -> int | None:
    """Trip count of a while loop whose condition compares a counter in the loop tuple with a constant (`i < N`,
    `i <= N`, `N > i`): XLA:TPU's HLO carries no known_trip_count. The counter's start is the constant the caller puts
    in the init tuple (0 if it cannot be traced to one, as jax's scans and fori_loops start), its step the constant the
    body adds to it (1 if none is found). None when the condition is not of that form."""
    c = comps.get(cond, {})
    cmp = c.get("compare")
    if not cmp:
        return None
    a, b, direction = cmp
    if direction in ("GT", "GE"):
        a, b, direction = b, a, {"GT": "LT", "GE": "LE"}[direction]
    if direction not in ("LT", "LE") or b not in c["consts"] or a not in c["gte"]:
        return None
    k, bound = c["gte"][a], c["consts"][b] + (direction == "LE")
    start, step = 0, 1
    args = comps[caller]["ops"].get(init, ("", []))[1] if init else []
    name = args[k] if k < len(args) else None
    while name in comps[caller]["ops"] and comps[caller]["ops"][name][0] == "copy":
        name = comps[caller]["ops"][name][1][0]
    start = comps[caller]["consts"].get(name, 0)
    root = comps.get(body, {}).get("root", [])
    update = comps[body]["ops"].get(root[k]) if k < len(root) else None
    if update and update[0] == "add":
        consts, gte = comps[body]["consts"], comps[body]["gte"]
        steps = [consts[x] for x in update[1] if x in consts]
        if len(steps) == 1 and any(gte.get(x) == k for x in update[1]) and steps[0] > 0:
            step = steps[0]
    return max(0, -(-(bound - start) // step))


_KERNEL_COST = re.compile(r'custom_call_target="tpu_custom_call".*?"cost_estimate":\{"flops":"(\d+)"')


def hlo_dot_flops(hlo_text: str, skip_scopes=(), kernel_estimates: bool = False) -> tuple[float, int]:
    """(dot FLOPs of a compiled HLO module, number of while loops without a known trip count).

    Every computation's dots (and dot-like convolutions, XLA:TPU's form of a dot) are weighted by how often it runs:
    fusions and calls once per caller, while bodies times the `known_trip_count` XLA:CPU records for scans or, where
    the HLO has none (XLA:TPU), the bound of the loop condition's `i < N`. This is the per-device count for an
    SPMD-partitioned module. Dots whose op_name runs through one of `skip_scopes` (the names of interpreted Pallas
    kernels) are left out: an interpreted kernel's HLO holds every block of its grid, the ones the kernel skips on
    device included. With `kernel_estimates`, Mosaic kernels (`tpu_custom_call`) count at the pl.CostEstimate
    serialized in their backend config, also times the trips of their loops."""
    skip = tuple(f"/{s}/" for s in skip_scopes)
    comps: dict[str, dict] = {}
    entry, cur, shapes = None, None, {}
    loops = []  # (caller, body, condition, known trip count or None, the init tuple)
    for line in hlo_text.splitlines():
        head = _HEADER.match(line)
        if head and not line.startswith(" "):
            cur, shapes = head.group(2), {}
            comps[cur] = {"dots": 0.0, "calls": [], "branches": [], "consts": {}, "compare": None, "gte": {},
                          "ops": {}, "root": []}
            entry = cur if head.group(1) else entry
            continue
        if cur is None:
            continue
        d = _DEF.match(line)
        if d:
            shapes[d.group(1)] = _dims(d.group(3))
            if not (skip and any(x in line for x in skip)):
                comps[cur]["dots"] += _op_flops(line, _dims(d.group(3)), shapes)
        kernel = _KERNEL_COST.search(line) if kernel_estimates else None
        if kernel:  # a kernel returning several outputs has a tuple type, which _DEF does not match
            comps[cur]["dots"] += float(kernel.group(1))
        const = _CONST.match(line)
        if const:
            comps[cur]["consts"][const.group(1)] = int(const.group(2))
        cmp = _COMPARE.match(line)
        if cmp:
            comps[cur]["compare"] = cmp.groups()
        op = _OP.match(line) if re.search(r"\s(tuple|get-tuple-element|add|copy|while)\(", line) else None
        if op:  # what a loop's trip count is read from: the counter's start, bound and step
            root, name, opcode = op.group(1), op.group(2), op.group(3)
            args = [a.strip().lstrip("%") for a in re.sub(r"/\*[^*]*\*/", "", op.group(4)).split(",") if a.strip()]
            args = [a.split()[-1].lstrip("%") for a in args]  # drop inline operand types
            comps[cur]["ops"][name] = (opcode, args)
            index = re.search(r"\bindex=(\d+)", line)
            if opcode == "get-tuple-element" and index:
                comps[cur]["gte"][name] = int(index.group(1))
            if root and opcode == "tuple":
                comps[cur]["root"] = args
        called = dict((k, v) for k, v in _CALLS.findall(line))
        if "body" in called:
            t = _TRIP.search(line)
            init = comps[cur]["ops"].get(op.group(2))[1][0] if op and op.group(3) == "while" else None
            loops.append((cur, called["body"], called.get("condition"), int(t.group(1)) if t else None, init))
        comps[cur]["calls"] += [(v, 1) for k, v in _CALLS.findall(line) if k in ("calls", "to_apply")]
        branches = re.search(r"branch_computations=\{([^}]*)\}", line)
        if branches:
            comps[cur]["branches"].append([b.strip().lstrip("%") for b in branches.group(1).split(",")])
    unknown = 0
    for caller, body, cond, trip, init in loops:
        if trip is None and cond in comps and body in comps:
            trip = _trip_from_condition(comps, caller, body, cond, init)
        unknown += trip is None
        comps[caller]["calls"].append((body, trip or 1))

    @functools.cache
    def total(c):  # a conditional counts its costliest branch
        return (comps[c]["dots"] + sum(t * total(s) for s, t in comps[c]["calls"] if s in comps)
                + sum(max((total(b) for b in group if b in comps), default=0.0) for group in comps[c]["branches"]))

    return (total(entry) if entry else float("nan")), unknown


def largest_arrays(hlo_text: str, n: int = 5) -> list[dict]:
    """The n largest distinct array shapes defined anywhere in the compiled module: where temporaries come from."""
    seen: dict[str, dict] = {}
    for line in hlo_text.splitlines():
        d = _DEF.match(line)
        if not d or d.group(2) not in _DTYPE_BYTES:
            continue
        key = f"{d.group(2)}[{d.group(3)}]"
        if key not in seen:
            op = re.search(r'op_name="([^"]*)"', line)
            seen[key] = {"array": key, "bytes": _DTYPE_BYTES[d.group(2)] * math.prod(_dims(d.group(3))),
                         "op": op.group(1)[-90:] if op else ""}
    return sorted(seen.values(), key=lambda r: -r["bytes"])[:n]


def deltanet_flops_per_token(cfg) -> float:
    """Training FLOPs per token of the chunked gated delta rule (WY form, docs/spec/kernels.md §3.3), all layers.

    Per value head and token, forward, with chunk C, key dim dk, value dim dv: K Kᵀ within the chunk 2·C·dk,
    U = A(βV) 2·C·dv, W = A(βK) 2·C·dk, intra-chunk Q Kᵀ 2·C·dk and its product with V_new 2·C·dv, and three
    state products (W S, Q S, Kᵀ V_new) 3·2·dk·dv. The triangular solve for A (C²/token) is left out.
    x3 for training.
    """
    n_lin = sum(t == "linear_attention" for t in cfg.layer_types)
    C, dk, dv = cfg.deltanet_chunk_size, cfg.linear_key_head_dim, cfg.linear_value_head_dim
    per_head = 2 * C * (3 * dk + 2 * dv) + 6 * dk * dv
    return 3.0 * n_lin * cfg.linear_num_value_heads * per_head


# ---- memory --------------------------------------------------------------------------------------------------------

def _shard_bytes(abstract_tree, sharding_tree) -> int:
    leaves = jax.tree.leaves(abstract_tree)
    shardings = jax.tree.leaves(sharding_tree)
    return sum(math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize for x, s in zip(leaves, shardings))


def param_groups(abstract_params, param_shardings) -> list[dict]:
    """One row per parameter (the stacked layers are one array per block-pattern position), with its partition spec."""
    from a1jax.model.params import is_param
    rows = []
    flat, _ = jax.tree_util.tree_flatten_with_path(abstract_params, is_leaf=is_param)
    flat_sh = jax.tree.leaves(param_shardings, is_leaf=is_param)
    for (path, leaf), sh in zip(flat, flat_sh):
        value, spec_sh = (leaf.value, sh.value) if is_param(leaf) else (leaf, sh)
        rows.append({"name": jax.tree_util.keystr(path, simple=True, separator="."), "shape": list(value.shape),
                     "axes": list(getattr(leaf, "axes", ())), "spec": str(spec_sh.spec),
                     "bytes_per_device": math.prod(spec_sh.shard_shape(value.shape)) * value.dtype.itemsize})
    return rows


def activation_bytes(built, exp, batch) -> int:
    """Global bytes of the residuals the decoder forward saves for its backward (parameters excluded)."""
    from jax._src.ad_checkpoint import saved_residuals  # the engine behind jax.ad_checkpoint.print_saved_residuals
    from a1jax import model
    cfg = exp.model

    def fwd(params, batch):
        out = model.forward(params, batch["tokens"], cfg, positions=batch["positions"],
                            segment_ids=batch["segment_ids"], return_logits=False, parallel=built.ctx.parallel)
        return jnp.sum(out.hidden.astype(jnp.float32))

    residuals = saved_residuals(fwd, built.abstract_state.params, batch)
    return sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a, why in residuals
               if "argument" not in why)


# ---- the plan --------------------------------------------------------------------------------------------------------

def use_cpu_devices(n: int) -> list:
    """N virtual CPU devices. Must run before the CPU backend starts; if it already has fewer, fail clearly."""
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend is up: the devices it has are all there will be
        pass
    have = jax.devices("cpu")
    if len(have) < n:
        raise ValueError(f"--devices {n}: the JAX CPU backend was already initialised with {len(have)} devices; "
                         f"start a fresh process (the planner sets jax_num_cpu_devices={n} before JAX starts)")
    return have[:n]


def required_devices(config) -> int | None:
    """The device count config.mesh names, or None when an axis is -1 (then --devices decides)."""
    sizes = [int(v) for v in dict(config.mesh).values()]
    return None if -1 in sizes else math.prod(sizes)


def abstract_batch(built, exp) -> dict:
    from a1jax.data.packing import BATCH_KEYS
    shape = (exp.data.batch_size, exp.data.seq_len)
    return {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "loss_mask" else jnp.int32,
                                    sharding=built.batch_sharding) for k in BATCH_KEYS}


IMPL_FIELDS = (("moe_impl", "moe"), ("attention_impl", "attention"), ("deltanet_impl", "gdn"))


def resolve_impls(config, platform: str) -> dict:
    """Plans the program `platform` would run: every model `*_impl` left at "auto" becomes that platform's kernel
    (kernels/backend.py's chain for it, $KERNELS_<OP>_IMPL included), instead of the XLA fallbacks the CPU host would
    pick. Edits config.model.overrides in place; returns {field: "auto -> chosen"} for the fields it changed.
    On the CPU host the chosen Pallas kernels are interpreted; their pl.CostEstimate gives their FLOPs."""
    from kernels import backend
    overrides = config.model.get("overrides") or {}
    changed = {}
    for field, op in IMPL_FIELDS:
        if overrides.get(field, None) == "auto":
            chosen = backend.candidates(op, None, platform)[0]
            config.model.overrides[field] = chosen
            changed[field] = f"auto -> {chosen}"
    return changed


def device_table(kind: str, table: dict) -> tuple[str, float]:
    kind = kind.lower()
    for name, value in table.items():
        if name in kind:
            return name, value
    raise ValueError(f"--device_kind {kind!r}: unknown; known kinds: {sorted(table)}")


def plan(exp, *, devices, device_kind: str = "tpu v5p", num_domains: int = 1) -> dict:
    """Builds, traces, lowers and compiles the train step of `exp` on `devices` (abstract inputs only) and returns
    the plan as a JSON-ready dict (see the module docstring for what each figure means)."""
    from a1jax.train import metrics
    from a1jax.train.build import build
    kind, hbm = device_table(device_kind, HBM_BYTES)
    _, peak = device_table(kind, metrics.PEAK_FLOPS)
    cfg, n = exp.model, len(devices)
    times = {}
    t = time.perf_counter()
    built = build(exp, num_domains=num_domains, devices=devices)  # mesh and batch checks fail here, before compiling
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), built.abstract_state,
                         built.state_shardings)
    batch = abstract_batch(built, exp)
    extra = exp.stage.inputs - 1  # beyond the batch
    if extra:
        raise ValueError(f"config.stage={exp.config.stage!r}: its step takes {extra} input(s) besides the batch "
                         f"(e.g. teacher targets); the planner synthesises only the batch {list(batch)}")
    times["build_s"] = time.perf_counter() - t
    t = time.perf_counter()
    traced = built.step_fn.trace(state, batch)
    times["trace_s"] = time.perf_counter() - t
    t = time.perf_counter()
    lowered = traced.lower()
    times["lower_s"] = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    times["compile_s"] = time.perf_counter() - t

    t = time.perf_counter()
    mem = compiled.memory_analysis()
    hlo = compiled.as_text()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}  # jax < 0.5 returned a list per module
    unknown_loops: list = []
    by_source: dict = {}
    kernels: dict = {}
    prog = program_flops(traced.jaxpr.jaxpr, unknown_loops, by_source, kernels=kernels)
    xla_dots, unknown_hlo_loops = hlo_dot_flops(hlo, skip_scopes=tuple(kernels))
    kernel_flops = sum(kernels.values()) / n  # kernels run inside shard_map: their work is split over the devices
    dots = xla_dots + kernel_flops
    b_shards = math.prod(built.mesh.shape[a] for a in _spec_axes(built.batch_sharding.spec))
    acts = activation_bytes(built, exp, batch) / b_shards
    times["analysis_s"] = time.perf_counter() - t

    tokens = exp.data.batch_size * exp.data.seq_len
    per_token, remat = analytic_flops(exp, built.ctx)
    base = per_token * tokens
    gdn = deltanet_flops_per_token(cfg) * tokens
    params_b = _shard_bytes(state.params, built.state_shardings.params)
    opt_b = _shard_bytes(state.opt_state, built.state_shardings.opt_state)
    peak_b = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    per_dev = lambda x: x / n
    return {
        "config": {"devices": n, "mesh": {k: int(v) for k, v in built.mesh.shape.items()},
                   "batch_size": exp.data.batch_size, "seq_len": exp.data.seq_len, "device_kind": kind,
                   "hbm_bytes": hbm, "remat_policy": cfg.remat_policy, "scan_layers": cfg.scan_layers,
                   "moe_impl": cfg.moe_impl, "attention_impl": cfg.attention_impl,
                   "deltanet_impl": cfg.deltanet_impl, "compiled_on": f"XLA:{jax.devices('cpu')[0].platform.upper()}"},
        "memory_per_device": {
            "params": params_b, "optimizer_state": opt_b, "batch": _shard_bytes(batch, jax.tree.map(
                lambda x: x.sharding, batch)),
            "activations_estimate": int(acts), "temporaries_estimate": max(int(mem.temp_size_in_bytes - acts), 0),
            "compiled_arguments": mem.argument_size_in_bytes, "compiled_outputs": mem.output_size_in_bytes,
            "compiled_aliased": mem.alias_size_in_bytes, "compiled_temp": mem.temp_size_in_bytes,
            "peak": peak_b},
        "fits": peak_b <= hbm,
        "flops": {
            "analytic_per_device": per_dev(base), "analytic_per_token": base / tokens,
            "deltanet_per_device": per_dev(gdn), "remat_factor": remat, "trains_mtp": built.ctx.trains_mtp,
            "program_per_device": per_dev(prog), "program_per_token": prog / tokens,
            "program_loops_without_trip_count": len(unknown_loops),
            "compiled_dots_per_device": dots, "compiled_dots_per_token": dots * n / tokens,
            "compiled_xla_dots_per_device": xla_dots, "compiled_kernel_estimates_per_device": kernel_flops,
            "kernel_estimates_by_name": {k: v / n for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])},
            "compiled_loops_without_trip_count": unknown_hlo_loops,
            "xla_cost_analysis_per_device": float(cost.get("flops", float("nan"))),
            "ratio_program": prog / base,
            "ratio_program_remat": prog / (base * remat) if remat else None,
            "ratio_program_remat_deltanet": prog / ((base + gdn) * remat) if remat else None,
            "ratio_compiled": dots * n / base,
            "ratio_compiled_remat": dots * n / (base * remat) if remat else None,
            "compiled_over_program": dots * n / prog if prog else float("nan"),
            "step_seconds_at_peak": per_dev(base) / peak, "peak_flops": peak},
        "program_flops_by_source": dict(sorted(by_source.items(), key=lambda kv: -kv[1])),
        "largest_arrays": largest_arrays(hlo),
        "param_groups": param_groups(state.params, built.state_shardings.params),
        "times": times,
    }


def _spec_axes(spec) -> list[str]:
    out = []
    for entry in spec:
        out += [] if entry is None else list(entry) if isinstance(entry, tuple) else [entry]
    return out


# ---- output ----------------------------------------------------------------------------------------------------------

def _gb(x) -> str:
    return f"{x / 1e9:10.3f} GB"


def _fl(x) -> str:
    return f"{x:11.3e}"


def format_report(p: dict) -> str:
    """The human-readable table."""
    c, m, f = p["config"], p["memory_per_device"], p["flops"]
    mesh = " x ".join(f"{a}={s}" for a, s in c["mesh"].items())
    t = p["times"]
    lines = [
        f"mesh {mesh} ({c['devices']} devices), batch {c['batch_size']} x {c['seq_len']} tokens, "
        f"remat={c['remat_policy']}, scan_layers={c['scan_layers']}, moe_impl={c['moe_impl']}",
        f"compiled on {c['compiled_on']} with {c['devices']} virtual devices; verdict for {c['device_kind']} "
        f"({c['hbm_bytes'] / 1e9:.0f} GB HBM)",
        "kernels: " + (", ".join(f"{k} {v}" for k, v in c.get("resolved_impls", {}).items()) or "as configured")
        + f" (attention_impl={c['attention_impl']}, deltanet_impl={c['deltanet_impl']})",
        f"time: build {t['build_s']:.1f}s  trace {t['trace_s']:.1f}s  lower {t['lower_s']:.1f}s  "
        f"compile {t['compile_s']:.1f}s  analysis {t['analysis_s']:.1f}s",
        "",
        "memory per device",
        f"  parameters                 {_gb(m['params'])}   exact (shard shapes)",
        f"  optimizer state            {_gb(m['optimizer_state'])}   exact",
        f"  batch                      {_gb(m['batch'])}   exact",
        f"  activations (saved)        {_gb(m['activations_estimate'])}   estimate: saved residuals / shards",
        f"  temporaries (rest)         {_gb(m['temporaries_estimate'])}   XLA:CPU temp - activations",
        f"  compiled arguments         {_gb(m['compiled_arguments'])}   XLA:CPU (params + opt state + batch)",
        f"  compiled temp              {_gb(m['compiled_temp'])}   XLA:CPU buffer assignment",
        f"  peak (args+out-alias+temp) {_gb(m['peak'])}   -> {'FITS' if p['fits'] else 'DOES NOT FIT'} in "
        f"{c['hbm_bytes'] / 1e9:.0f} GB ({m['peak'] / c['hbm_bytes']:.0%} of HBM)",
        "",
        "FLOPs per step per device",
        f"  analytic 6*N_active + causal attention  {_fl(f['analytic_per_device'])}   "
        f"({f['analytic_per_token']:.3e} per token" + (", MTP module included)" if f["trains_mtp"] else ")"),
        f"  + Gated DeltaNet chunks (estimate)      {_fl(f['deltanet_per_device'])}",
        f"  program (traced jaxpr, all matmuls)     {_fl(f['program_per_device'])}   "
        f"ratio {f['ratio_program']:.3f} raw"
        + (f", {f['ratio_program_remat']:.3f} / remat {f['remat_factor']:.3f}, "
           f"{f['ratio_program_remat_deltanet']:.3f} incl. DeltaNet" if f["remat_factor"] else
           f" (remat_policy={c['remat_policy']}: recompute not modelled, expect 1..4/3)"),
        f"  compiled XLA:CPU dots x loop trips      {_fl(f['compiled_dots_per_device'])}   "
        f"ratio {f['ratio_compiled']:.3f}"
        + (f", {f['ratio_compiled_remat']:.3f} / remat {f['remat_factor']:.3f}" if f["remat_factor"] else "")
        + f"  ({f['compiled_over_program']:.2f} x program)",
        f"    of which Pallas kernels (cost estimates) {_fl(f['compiled_kernel_estimates_per_device'])}   "
        + ", ".join(f"{k} {v:.2e}" for k, v in list(f["kernel_estimates_by_name"].items())[:4]),
        f"  XLA cost_analysis (loop bodies once)    {_fl(f['xla_cost_analysis_per_device'])}",
        f"  step time at {f['peak_flops'] / 1e12:.0f} TFLOP/s peak (analytic)  {f['step_seconds_at_peak']:.3f} s",
    ]
    if f["compiled_over_program"] > OVERCOMPUTE_WARNING:
        lines.append(f"  WARNING: XLA:CPU compiled {f['compiled_over_program']:.1f}x the traced program's FLOPs per "
                     f"device: work the SPMD partitioner replicated instead of splitting, and/or ragged_dot, which "
                     f"XLA:CPU lowers to a dense matmul over all experts. CPU temporaries include it (largest arrays).")
    if f["program_loops_without_trip_count"] or f["compiled_loops_without_trip_count"]:
        lines.append(f"  note: {f['program_loops_without_trip_count']} traced / "
                     f"{f['compiled_loops_without_trip_count']} compiled while loops have no static trip count: "
                     f"counted once")
    lines += ["", "program FLOPs by source (global, top 8; share of the analytic count)"]
    base = f["analytic_per_device"] * c["devices"]
    lines += [f"  {k:48s} {v:11.3e}  {v / base:7.1%}" for k, v in list(p["program_flops_by_source"].items())[:8]]
    lines += ["", "largest arrays in the compiled program"]
    lines += [f"  {r['array']:40s} {_gb(r['bytes'])}  {r['op']}" for r in p["largest_arrays"]]
    lines += ["", "parameters: partition specs (per device bytes)"]
    width = max(len(r["name"]) for r in p["param_groups"])
    for r in p["param_groups"]:
        lines.append(f"  {r['name']:{width}s}  {str(tuple(r['shape'])):24s} {r['spec']:42s} "
                     f"{r['bytes_per_device'] / 1e6:10.2f} MB")
    return "\n".join(lines)
