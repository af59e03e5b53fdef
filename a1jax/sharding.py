"""Mesh and logical-axis rules: the whole sharding story in one short table.

Parameters carry logical axis names (a1jax/model/params.py). `LOGICAL_RULES` maps each name to mesh axes; a name
with no rule, or a mesh axis of size 1, or a dimension the mesh axes do not divide, is replicated. Experiment files
override single rules through `config.sharding_rules`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "expert", "tensor", "sequence")

# logical name -> mesh axis or tuple of mesh axes (sharded jointly, major to minor)
LOGICAL_RULES: dict[str, str | tuple[str, ...] | None] = {
    # activations
    "batch": ("data", "fsdp", "expert"),
    "length": "sequence",
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "lin_qk_heads": "tensor",
    "lin_v_heads": "tensor",
    "mlp": "tensor",
    "experts": "expert",
    "expert_embed": "fsdp",
    "expert_mlp": "tensor",
    "head_dim": None,
    "lin_head_dim": None,
    "conv_kernel": None,
    "router_experts": None,
    "mtp_fc_in": None,
    "norm": None,
    "layers": None,
}


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves one -1 ("all remaining devices") and checks that the product equals the device count."""
    unknown = sorted(set(mesh_config) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"config.mesh has unknown axes {unknown}; mesh axes are {list(MESH_AXES)}")
    sizes = {a: int(mesh_config.get(a, 1)) for a in MESH_AXES}
    auto = [a for a, s in sizes.items() if s == -1]
    if len(auto) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {auto}")
    bad = [f"{a}={s}" for a, s in sizes.items() if s == 0 or s < -1]
    if bad:
        raise ValueError(f"config.mesh: axis sizes must be positive or -1, got {', '.join(bad)}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if auto:
        if num_devices % fixed:
            raise ValueError(f"config.mesh: the fixed axes multiply to {fixed}, which does not divide the "
                             f"{num_devices} devices, so {auto[0]}=-1 cannot be resolved")
        sizes[auto[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(f"config.mesh: {' x '.join(f'{a}={s}' for a, s in sizes.items())} = {fixed} devices, "
                         f"but {num_devices} are available")
    return sizes


def hybrid_shapes(sizes: Mapping[str, int], dcn: Mapping[str, int] | None) -> tuple[tuple, tuple]:
    """(in-slice ICI shape, cross-slice DCN shape) in MESH_AXES order. `dcn[a]` is the part of axis a's total size
    `sizes[a]` that crosses slices (or hosts); it must divide it."""
    dcn = dict(dcn or {})
    unknown = sorted(set(dcn) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"config.mesh_dcn has unknown axes {unknown}; mesh axes are {list(MESH_AXES)}")
    ici, cross = [], []
    for a in MESH_AXES:
        d = int(dcn.get(a, 1))
        if d < 1 or sizes[a] % d:
            raise ValueError(f"config.mesh_dcn.{a}={d} must be a positive divisor of the axis size "
                             f"config.mesh.{a}={sizes[a]}")
        ici.append(sizes[a] // d)
        cross.append(d)
    return tuple(ici), tuple(cross)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence | None = None,
              dcn: Mapping[str, int] | None = None) -> Mesh:
    """The 5-axis mesh. With `dcn` (config.mesh_dcn), axes split into an in-slice part (fast ICI/NVLink) and a
    cross-slice part (DCN/network) through `create_hybrid_device_mesh`: slices are TPU slices when devices have a
    `slice_index`, otherwise processes (one per host)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    ici, cross = hybrid_shapes(sizes, dcn)
    if math.prod(cross) > 1:
        by_process = not hasattr(devices[0], "slice_index")
        granules = len({d.process_index if by_process else d.slice_index for d in devices})
        if granules != math.prod(cross):
            raise ValueError(f"config.mesh_dcn asks for {math.prod(cross)} slices ({dict(zip(MESH_AXES, cross))}), "
                             f"but the devices come from {granules} {'processes' if by_process else 'slices'}")
        arr = mesh_utils.create_hybrid_device_mesh(ici, cross, devices=devices, process_is_granule=by_process)
    else:
        try:
            arr = mesh_utils.create_device_mesh(shape, devices=devices)
        except Exception:  # virtual CPU devices or shapes the topology helper cannot place: plain order
            arr = np.asarray(devices).reshape(shape)
    return Mesh(arr, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def merged_rules(overrides: Mapping | None = None) -> dict:
    rules = dict(LOGICAL_RULES)
    for name, axes in (overrides or {}).items():
        axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
        for a in (axes if isinstance(axes, tuple) else (axes,)):
            if a is not None and a not in MESH_AXES:
                raise ValueError(f"sharding rule {name!r} -> {axes!r}: {a!r} is not a mesh axis {list(MESH_AXES)}")
        rules[name] = axes
    return rules


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Mapping) -> P:
    """PartitionSpec for one array. Mesh axes already used by an earlier dimension, of size 1, or not dividing the
    dimension are dropped (that dimension is then sharded over fewer axes, or replicated)."""
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape):
        rule = rules.get(name) if name is not None else None
        cands = rule if isinstance(rule, tuple) else ((rule,) if rule else ())
        chosen = []
        for a in cands:
            size = mesh.shape[a]
            if a in used or size == 1:
                continue
            if dim % (math.prod(mesh.shape[c] for c in chosen) * size):
                continue
            chosen.append(a)
        used.update(chosen)
        spec.append(None if not chosen else (chosen[0] if len(chosen) == 1 else tuple(chosen)))
    return P(*spec)


def tree_shardings(abstract_tree, axes_tree, mesh: Mesh, rules: Mapping):
    """NamedShardings for a tree of arrays (or ShapeDtypeStructs) given a matching tree of logical axis tuples."""
    is_axes = lambda x: isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)
    return jax.tree.map(lambda axes, x: NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh, rules)),
                        axes_tree, abstract_tree, is_leaf=is_axes)


def batch_sharding(mesh: Mesh, rules: Mapping, ndim: int = 2) -> NamedSharding:
    """Batch arrays [B, T, ...]: B over the batch axes, T over `sequence`."""
    b = rules.get("batch")
    b = tuple(a for a in (b if isinstance(b, tuple) else (b,)) if a and mesh.shape[a] > 1)
    t = rules.get("length")
    t = t if t and mesh.shape[t] > 1 else None
    return NamedSharding(mesh, P(b if b else None, t, *([None] * (ndim - 2))))


def check_batch_fits_mesh(batch_size: int, mesh: Mesh, rules: Mapping, field: str = "data.batch_size") -> None:
    spec = batch_sharding(mesh, rules).spec[0]
    axes = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
    ways = math.prod(mesh.shape[a] for a in axes)
    if batch_size % ways:
        raise ValueError(f"config.{field}={batch_size} must be divisible by the {ways} batch shards "
                         f"({' x '.join(f'{a}={mesh.shape[a]}' for a in axes)})")


def check_sequence_fits_mesh(seq_len: int, cfg, mesh: Mesh, field: str = "data.seq_len") -> None:
    s = mesh.shape["sequence"]
    if seq_len % s:
        raise ValueError(f"config.{field}={seq_len} must be divisible by mesh axis 'sequence'={s}")
    if s > 1 and seq_len // s < cfg.linear_conv_kernel_dim - 1:
        raise ValueError(f"config.{field}={seq_len} over 'sequence'={s} leaves {seq_len // s} tokens per shard; the "
                         f"DeltaNet conv halo needs at least {cfg.linear_conv_kernel_dim - 1}")
    if s > 1 and cfg.ring_load_balance == "zigzag" and (seq_len // s) % 2:
        raise ValueError(f"config.{field}={seq_len} over 'sequence'={s} leaves {seq_len // s} tokens per shard; "
                         f"model.ring_load_balance='zigzag' needs an even number")


def check_model_fits_mesh(cfg, mesh: Mesh) -> None:
    """Impossible layouts fail here, before anything compiles, with the numbers in the message."""
    e, t = mesh.shape["expert"], mesh.shape["tensor"]
    if cfg.is_moe and cfg.num_experts % e:
        raise ValueError(f"mesh axis 'expert'={e} must divide num_experts={cfg.num_experts}")
    if not cfg.is_moe and e > 1:
        raise ValueError(f"mesh axis 'expert'={e} needs a MoE model, but num_experts=0")
    for name in ("num_attention_heads", "linear_num_value_heads", "linear_num_key_heads"):
        if getattr(cfg, name) % t:
            raise ValueError(f"mesh axis 'tensor'={t} must divide {name}={getattr(cfg, name)}")
