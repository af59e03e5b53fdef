"""Multi-process start-up, and the few cross-process helpers the trainer needs.

`initialize()` turns the environment into at most one `jax.distributed.initialize` call. Call it first thing in every
multi-process entry point (`a1jax train` does), before anything touches a jax device. Launchers set exactly these
variables; the first row that applies decides:

| set in the environment                          | mode     | what happens                                        |
|-------------------------------------------------|----------|-----------------------------------------------------|
| A1JAX_DISTRIBUTED=0                             | single   | nothing, even inside a cluster                      |
| A1JAX_COORDINATOR_ADDRESS=host:port             | explicit | jax.distributed.initialize(address, N, i, ids);     |
|   A1JAX_NUM_PROCESSES=N, A1JAX_PROCESS_ID=i     |          | process 0 serves the coordinator at host:port, all  |
|   [A1JAX_LOCAL_DEVICE_IDS=0,1,...]              |          | processes reach it; ids 0..N-1, each exactly once   |
| A1JAX_NUM_PROCESSES=N, JOB_COMPLETION_INDEX     | jobset   | Kubernetes JobSet / Indexed Job: the same call, with|
|   [A1JAX_PROCESS_ID] [A1JAX_COORDINATOR_PORT]   |          | i = A1JAX_PROCESS_ID, else JOB_COMPLETION_INDEX;    |
|   [A1JAX_JOBSET_SUBDOMAIN] [HOSTNAME]           |          | address = pod 0 of job 0, see below                 |
| SLURM_JOB_ID and SLURM_NTASKS > 1 (under srun)  | auto     | jax.distributed.initialize(): jax's own detection   |
| OMPI_COMM_WORLD_SIZE > 1 (mpirun)               | auto     | idem                                                |
| a Cloud TPU VM, or TPU_WORKER_HOSTNAMES /       | auto     | idem (a single-host TPU VM becomes a one-process    |
|   TPU_PROCESS_ADDRESSES[_PATH] (GKE)            |          | job, which is harmless)                             |
| A1JAX_DISTRIBUTED=1                             | auto     | idem, anywhere (e.g. jax's K8sCluster, which needs  |
|                                                 |          | the `kubernetes` package)                           |
| none of these                                   | single   | nothing: one process sees all local devices         |
| A1JAX_CPU_DEVICES=N (combines with any row)     |          | N virtual CPU devices per process (jax_num_cpu_     |
|                                                 |          | devices) and, with several processes, gloo CPU      |
|                                                 |          | collectives: dry runs of a pod layout on CPUs (set  |
|                                                 |          | JAX_PLATFORMS=cpu on a machine with accelerators)   |

JobSet address: the pod's HOSTNAME is `<jobset>-<replicatedJob>-<jobIndex>-<podIndex>` (set by Kubernetes); the
coordinator is `<jobset>-<replicatedJob>-0-0.<subdomain>:<port>`, subdomain = A1JAX_JOBSET_SUBDOMAIN (the JobSet's
`network.subdomain`, by default the JobSet name), else the domain of this pod's FQDN; port = A1JAX_COORDINATOR_PORT,
default 8476. With several Jobs (replicas > 1), set A1JAX_PROCESS_ID = jobIndex * podsPerJob + JOB_COMPLETION_INDEX.

What jax (0.11 and 0.12, `jax._src.clusters`) detects by itself, in this order: Open MPI (OMPI_MCA_orte_hnp_uri;
Open MPI 5 needs mpi4py), SLURM (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID; one
task per accelerator, local_device_ids = [SLURM_LOCALID]; port from JAX_COORDINATOR_PORT, else from the job id),
mpi4py (opt-in only), GKE TPU (TPU_WORKER_HOSTNAMES or TPU_PROCESS_ADDRESSES[_PATH], TPU_WORKER_ID,
MEGASCALE_COORDINATOR_ADDRESS for multislice), GCE TPU VMs (the metadata server), Kubernetes Jobs/JobSets (the
`kubernetes` package and the API server).

A value that is not what the table says (a count that is no positive integer, an id outside 0..N-1, an address
that is not host:port) stops with an error naming the variable.

The helpers below keep the processes of one job in step: `data_shard` (which rows of the global batch this process
loads), `allgather_json` (every process's small JSON state, such as its data iterator position), `any_process`,
`barrier`, and `StopSignal` (SIGTERM on any process -> every process stops at the same step).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import sys
from typing import Mapping

import jax
import numpy as np

log = logging.getLogger("a1jax.distributed")

JOBSET_DEFAULT_PORT = 8476
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_JOBSET_HOSTNAME = re.compile(r"^(?P<prefix>.+)-(?P<job>\d+)-(?P<pod>\d+)$")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What `initialize` will do; `resolve(env)` computes it without side effects."""
    mode: str  # "single" | "explicit" | "jobset" | "auto"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    cpu_devices: int | None = None
    why: str = ""  # the variables that chose the mode, for the log line


def _int(env: Mapping[str, str], name: str, *, low: int, high: int | None = None) -> int:
    text = env[name].strip()
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={env[name]!r}: expected an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value}: expected an integer {bound}")
    return value


def _address(env: Mapping[str, str], name: str) -> str:
    text = env[name].strip()
    m = _HOST_PORT.match(text)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{name}={env[name]!r}: expected host:port, e.g. 10.0.0.2:8476 or node-0.svc:8476")
    return text


def _device_ids(env: Mapping[str, str], name: str) -> tuple[int, ...] | None:
    if not env.get(name, "").strip():
        return None
    try:
        ids = tuple(int(x) for x in env[name].split(","))
    except ValueError:
        raise ValueError(f"{name}={env[name]!r}: expected comma-separated device ids, e.g. 0,1,2,3") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"{name}={env[name]!r}: expected distinct non-negative device ids")
    return ids


def _jobset_coordinator(env: Mapping[str, str], port: int) -> str:
    hostname = env.get("HOSTNAME", "").strip() or socket.gethostname()
    m = _JOBSET_HOSTNAME.match(hostname.split(".")[0])
    if not m:
        raise ValueError(f"HOSTNAME={hostname!r}: expected a JobSet pod host name <jobset>-<replicatedJob>-<jobIndex>-"
                         f"<podIndex>; set A1JAX_COORDINATOR_ADDRESS instead")
    subdomain = env.get("A1JAX_JOBSET_SUBDOMAIN", "").strip()
    if not subdomain:
        fqdn = socket.getfqdn(hostname)
        subdomain = fqdn.split(".", 1)[1] if "." in fqdn else ""
    if not subdomain:
        raise ValueError(f"cannot find the JobSet subdomain of {hostname!r} (its FQDN has none): set "
                         f"A1JAX_JOBSET_SUBDOMAIN (the JobSet's network.subdomain, by default the JobSet name)")
    return f"{m.group('prefix')}-0-0.{subdomain}:{port}"


def _on_tpu_vm(env: Mapping[str, str]) -> bool:
    if any(env.get(k) for k in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_PROCESS_ADDRESSES_PATH")):
        return True
    try:  # a PCI scan, no backend start-up (private, hence the guard)
        from jax._src import hardware_utils
        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # noqa: BLE001 - an unknown jax layout means "not detected"
        return False


def module_installed(name: str) -> bool:
    """Whether `name` (dotted: its parent packages too) can be imported, without importing it."""
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # a parent package is missing (find_spec imports the parents of a dotted name)
        return False


def host_platforms(env: Mapping[str, str] | None = None) -> str | None:
    """JAX_PLATFORMS for a command that did not set it, on a host without a TPU where libtpu is installed (the
    `tpu-aot` extra): "cpu", or "cuda,cpu" with a visible NVIDIA GPU and jax's CUDA plugin. Without it jax would
    try the TPU backend first: libtpu prints its init errors and the run only then falls back. None (jax chooses as
    usual) when JAX_PLATFORMS is set, libtpu is not installed, or this is a TPU host."""
    env = os.environ if env is None else env
    if env.get("JAX_PLATFORMS", "").strip() or not module_installed("libtpu") or _on_tpu_vm(env):
        return None
    try:
        from jax._src import hardware_utils
        gpu = hardware_utils.has_visible_nvidia_gpu()
    except Exception:  # noqa: BLE001 - an unknown jax layout means "not detected"
        gpu = False
    return "cuda,cpu" if gpu and module_installed("jax_plugins.xla_cuda12") else "cpu"


def pin_host_platforms() -> str | None:
    """Applies `host_platforms()` to this process (and the subprocesses it starts) before any backend starts; returns
    what it set."""
    platforms = host_platforms()
    if platforms:
        from jax._src import xla_bridge
        os.environ["JAX_PLATFORMS"] = platforms
        if not xla_bridge.backends_are_initialized():
            jax.config.update("jax_platforms", platforms)
    return platforms


def resolve(env: Mapping[str, str] | None = None) -> Plan:
    """The `Plan` for an environment (default: os.environ); see the module docstring's table."""
    env = os.environ if env is None else env
    cpu = _int(env, "A1JAX_CPU_DEVICES", low=1) if env.get("A1JAX_CPU_DEVICES", "").strip() else None
    switch = env.get("A1JAX_DISTRIBUTED", "").strip().lower()
    if switch not in ("", "0", "1", "false", "true", "auto"):
        raise ValueError(f"A1JAX_DISTRIBUTED={env['A1JAX_DISTRIBUTED']!r}: expected 0 (off), 1 (on) or unset (auto)")
    if switch in ("0", "false"):
        return Plan("single", cpu_devices=cpu, why="A1JAX_DISTRIBUTED=0")
    ids = _device_ids(env, "A1JAX_LOCAL_DEVICE_IDS")
    address = env.get("A1JAX_COORDINATOR_ADDRESS", "").strip()
    if address or env.get("A1JAX_NUM_PROCESSES", "").strip():
        if not env.get("A1JAX_NUM_PROCESSES", "").strip():
            raise ValueError("A1JAX_COORDINATOR_ADDRESS is set but A1JAX_NUM_PROCESSES is not: set both, and "
                             "A1JAX_PROCESS_ID")
        n = _int(env, "A1JAX_NUM_PROCESSES", low=1)
        id_var = "A1JAX_PROCESS_ID" if env.get("A1JAX_PROCESS_ID", "").strip() else "JOB_COMPLETION_INDEX"
        if id_var not in env:
            raise ValueError("A1JAX_PROCESS_ID is not set (nor JOB_COMPLETION_INDEX, set by Kubernetes Indexed "
                             "Jobs): each process needs its id in 0..A1JAX_NUM_PROCESSES-1")
        pid = _int(env, id_var, low=0, high=n - 1)
        if address:
            return Plan("explicit", _address(env, "A1JAX_COORDINATOR_ADDRESS"), n, pid, ids, cpu,
                        why=f"A1JAX_COORDINATOR_ADDRESS, {id_var}")
        if "JOB_COMPLETION_INDEX" not in env:
            raise ValueError("A1JAX_NUM_PROCESSES is set but A1JAX_COORDINATOR_ADDRESS is not (and this is no "
                             "Kubernetes Indexed Job: JOB_COMPLETION_INDEX is unset)")
        port = (_int(env, "A1JAX_COORDINATOR_PORT", low=1, high=65535)
                if env.get("A1JAX_COORDINATOR_PORT", "").strip() else JOBSET_DEFAULT_PORT)
        return Plan("jobset", _jobset_coordinator(env, port), n, pid, ids, cpu, why=f"JOB_COMPLETION_INDEX, {id_var}")
    if "SLURM_JOB_ID" in env and env.get("SLURM_NTASKS", "").strip():
        if _int(env, "SLURM_NTASKS", low=1) > 1:
            missing = [k for k in ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID") if k not in env]
            if missing:
                raise ValueError(f"SLURM_NTASKS={env['SLURM_NTASKS']} but {', '.join(missing)} not set: start every "
                                 f"task with srun (jax reads the step's variables)")
            return Plan("auto", cpu_devices=cpu, why="SLURM_JOB_ID, SLURM_NTASKS>1")
    if env.get("OMPI_COMM_WORLD_SIZE", "").strip() and _int(env, "OMPI_COMM_WORLD_SIZE", low=1) > 1:
        return Plan("auto", cpu_devices=cpu, why="OMPI_COMM_WORLD_SIZE>1")
    if switch in ("1", "true", "auto"):
        return Plan("auto", cpu_devices=cpu, why=f"A1JAX_DISTRIBUTED={switch}")
    if cpu is None and env.get("JAX_PLATFORMS", "").strip().lower() not in ("cpu",) and _on_tpu_vm(env):
        return Plan("auto", why="Cloud TPU VM")
    return Plan("single", cpu_devices=cpu, why="no cluster variables")


def _already_initialized() -> bool:
    from jax._src import distributed as jax_distributed  # no public "is initialized" in jax 0.11
    return jax_distributed.global_state.client is not None


GLOO_CACHE_HANGS_FROM = (0, 12, 1)


def _no_cache_for_gloo_executables() -> None:
    """From jax 0.12.1, a multi-process CPU (gloo) executable loaded from the persistent compilation cache deadlocks
    in its first collective (every process waits in its first device_get; found by
    tests/test_multihost.py's SIGTERM resume, whose second run finds the first run's step in the cache). jax
    0.12.0.1 runs it. So such runs compile afresh: CPU multi-process is for tests, where compiles are small."""
    if jax.__version_info__ >= GLOO_CACHE_HANGS_FROM and jax.config.jax_enable_compilation_cache:
        if jax.config.jax_compilation_cache_dir:
            log.info("persistent compilation cache off: jax %s deadlocks multi-process CPU executables loaded "
                     "from it", jax.__version__)
        jax.config.update("jax_enable_compilation_cache", False)


def initialize(env: Mapping[str, str] | None = None) -> Plan:
    """Starts jax's distributed runtime as `resolve(env)` says; a no-op if it is already running."""
    plan = resolve(env)
    if _already_initialized():
        return plan
    if plan.cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", plan.cpu_devices)
        if plan.mode != "single":  # cross-process CPU collectives; in-process ones need nothing
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            _no_cache_for_gloo_executables()
    if plan.mode == "single":
        return plan
    kwargs = {}
    if plan.mode in ("explicit", "jobset"):
        kwargs = dict(coordinator_address=plan.coordinator_address, num_processes=plan.num_processes,
                      process_id=plan.process_id, local_device_ids=list(plan.local_device_ids or []) or None)
    log.info("jax.distributed.initialize (%s: %s) %s", plan.mode, plan.why, kwargs)
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())
    return plan


# --- keeping processes in step -------------------------------------------------------------------------------------

def data_shard(batch_sharding, global_shape: tuple[int, ...]) -> tuple[int, int]:
    """(index, count): this process loads rows block `index` of `count` equal blocks of the global batch.

    Processes whose devices hold the same rows (rows replicated across hosts, or split only along the sequence)
    share an index and must load identical rows; `jax.make_array_from_process_local_data` then takes from each
    process's [B / count, ...] rows what its devices hold. One process: (0, 1).
    """
    rows = global_shape[0]
    per_process: dict[int, set] = {}
    for device, index in batch_sharding.devices_indices_map(tuple(global_shape)).items():
        r = index[0]
        per_process.setdefault(device.process_index, set()).update(range(*r.indices(rows)))
    blocks = sorted({frozenset(v) for v in per_process.values()}, key=min)
    sizes = {len(b) for b in blocks}
    if len(sizes) != 1 or sum(map(len, blocks)) != rows:
        raise ValueError(f"the batch sharding {batch_sharding.spec} gives processes overlapping or unequal sets of "
                         f"the {rows} batch rows ({[sorted(b) for b in blocks]}); map the batch axes so that each "
                         f"process holds whole rows of its own")
    return blocks.index(frozenset(per_process[jax.process_index()])), len(blocks)


def allgather_json(obj) -> list:
    """[process 0's obj, process 1's obj, ...] on every process (small JSON-serializable objects)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils
    data = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.asarray(multihost_utils.process_allgather(np.array([int(flag)], np.int32))).any())


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class StopSignal:
    """SIGTERM (preemption) -> `requested(step)` turns true at the same step on every process.

    One process: a Python SIGTERM handler sets a flag. Several: jax's preemption sync manager (started by
    `jax.distributed.initialize`) catches SIGTERM on any process and agrees on the step
    (`multihost_utils.reached_preemption_sync_point`); a Python handler would replace its C++ one, so none is
    installed. If the preemption service is off (jax_enable_preemption_service=False), the flag is all-reduced
    every step instead. `requested` must be called once per step with increasing steps, on every process.
    """

    def __init__(self):
        from jax._src import distributed as jax_distributed
        self._multi = jax.process_count() > 1
        self._sync_manager = self._multi and jax_distributed.global_state.preemption_sync_manager is not None
        self._flag = False
        self._previous = None
        if not self._sync_manager:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, *_):
        if not self._flag:  # the run may go on for a while: a stage with rollouts stops at a rollout boundary
            sys.stderr.write("SIGTERM received: the run stops at its next stopping step (a checkpoint is written "
                             "first)\n")
            sys.stderr.flush()
        self._flag = True

    def requested(self, step: int) -> bool:
        if self._sync_manager:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(int(step))
        return any_process(self._flag) if self._multi else self._flag

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
