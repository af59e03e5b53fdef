"""The quickstart on 8 virtual CPU devices: data=2 x fsdp=4 (parameters and optimizer state sharded 4 ways).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        a1jax train --config experiments/quickstart_8cpu.py --workdir workdirs/quickstart_8cpu

Hardware: CPU. Expected: the same losses as experiments/quickstart.py to about 1e-5 (sharded sums reorder fp32
additions), at roughly the same speed on 2 cores. Use it to check a sharding change without an accelerator.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "a1jax_experiment_quickstart", os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
_quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_quickstart)


def get_config(arg: str = ""):
    c = _quickstart.get_config(arg)
    c.mesh.data, c.mesh.fsdp = 2, 4
    c.data.batch_size = 8  # rows are split over data x fsdp = 8 devices
    c.data.eval_batch_size = 8
    return c
