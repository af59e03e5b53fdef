"""Multi-process training: the `a1jax.distributed` start-up rules, and 2 processes x 4 CPU devices (gloo) training
exactly like 1 process x 8 devices on the same data=2 x fsdp=4 mesh."""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from a1jax import distributed, stages
from a1jax.data import pipeline
from a1jax.train import checkpoint, experiment, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART_8CPU = os.path.join(REPO, "experiments", "quickstart_8cpu.py")
STEPS = 8


# --- the rules of initialize(), checked without starting anything ---------------------------------------------------

def test_explicit_variables_become_one_initialize_call():
    plan = distributed.resolve({"A1JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476", "A1JAX_NUM_PROCESSES": "4",
                                "A1JAX_PROCESS_ID": "3", "A1JAX_LOCAL_DEVICE_IDS": "0,1", "A1JAX_CPU_DEVICES": "2"})
    assert (plan.mode, plan.coordinator_address, plan.num_processes, plan.process_id) == (
        "explicit", "10.0.0.2:8476", 4, 3)
    assert plan.local_device_ids == (0, 1) and plan.cpu_devices == 2


def test_a_cpu_host_with_libtpu_installed_stays_on_cpu(monkeypatch):
    """libtpu (the tpu-aot extra) makes jax try the TPU backend first; the CLI pins such a host to CPU (or CUDA + CPU
    with a visible GPU), and leaves a TPU host, an explicit JAX_PLATFORMS or a host without libtpu alone."""
    import importlib.util
    from jax._src import hardware_utils
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "libtpu" else
                        None if name == "jax_plugins.xla_cuda12" else real_find_spec(name, *a))
    monkeypatch.setattr(distributed, "_on_tpu_vm", lambda env: False)
    monkeypatch.setattr(hardware_utils, "has_visible_nvidia_gpu", lambda: False)
    assert distributed.host_platforms({}) == "cpu"
    assert distributed.host_platforms({"JAX_PLATFORMS": "tpu"}) is None
    monkeypatch.setattr(hardware_utils, "has_visible_nvidia_gpu", lambda: True)
    assert distributed.host_platforms({}) == "cpu"  # a GPU but no CUDA plugin: jax could not use it anyway
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in (
        "libtpu", "jax_plugins.xla_cuda12") else real_find_spec(name, *a))
    assert distributed.host_platforms({}) == "cuda,cpu"
    monkeypatch.setattr(distributed, "_on_tpu_vm", lambda env: True)
    assert distributed.host_platforms({}) is None
    monkeypatch.setattr(distributed, "_on_tpu_vm", lambda env: False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else
                        real_find_spec(name, *a))
    assert distributed.host_platforms({}) is None
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    assert not distributed.module_installed("no_such_package_a1jax.plugin")  # a missing parent is "not installed"


def test_cli_start_up_without_jax_platforms_prints_no_libtpu_errors():
    """The real thing, in a fresh process without JAX_PLATFORMS: the CLI's start-up leaves jax on CPU, silently."""
    import importlib.util
    if importlib.util.find_spec("libtpu") is None or distributed._on_tpu_vm(os.environ):
        if os.environ.get("A1JAX_REQUIRE_LIBTPU") == "1" and not distributed._on_tpu_vm(os.environ):
            pytest.fail("A1JAX_REQUIRE_LIBTPU=1 but libtpu is not installed", pytrace=False)
        pytest.skip("needs libtpu installed on a host without a TPU")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    code = ("from a1jax import distributed; distributed.pin_host_platforms(); import jax, os; "
            "print(jax.default_backend(), os.environ['JAX_PLATFORMS'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "cpu" and "TPU" not in out.stderr and "libtpu" not in out.stderr, out.stderr


@pytest.mark.parametrize("version, cached", [((0, 12, 0, 1), True), ((0, 12, 1), False), ((0, 13, 0), False)])
def test_gloo_runs_skip_the_persistent_cache_where_jax_deadlocks_on_it(monkeypatch, version, cached):
    """jax 0.12.1: a multi-process CPU step loaded from the cache hangs in its first collective (the SIGTERM resume
    below, 2026-12-06), so `initialize` turns the cache off for gloo runs there; older jax keeps it."""
    monkeypatch.setattr(jax, "__version_info__", version)
    before = jax.config.jax_enable_compilation_cache
    try:
        jax.config.update("jax_enable_compilation_cache", True)
        distributed._no_cache_for_gloo_executables()
        assert jax.config.jax_enable_compilation_cache is cached
    finally:
        jax.config.update("jax_enable_compilation_cache", before)


def test_nothing_set_or_switched_off_is_one_process():
    assert distributed.resolve({}).mode == "single"
    assert distributed.resolve({"JAX_PLATFORMS": "cpu", "A1JAX_CPU_DEVICES": "8"}).cpu_devices == 8
    off = distributed.resolve({"A1JAX_DISTRIBUTED": "0", "A1JAX_COORDINATOR_ADDRESS": "h:1", "SLURM_JOB_ID": "7",
                               "SLURM_NTASKS": "4"})
    assert off.mode == "single"
    assert distributed.resolve({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).mode == "single"  # one task


def test_slurm_and_mpi_are_left_to_jax_auto_detection():
    slurm = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "node[001-004]", "SLURM_PROCID": "2",
             "SLURM_LOCALID": "0", "JAX_PLATFORMS": "cpu"}
    assert distributed.resolve(slurm).mode == "auto"
    assert distributed.resolve({"OMPI_COMM_WORLD_SIZE": "8", "JAX_PLATFORMS": "cpu"}).mode == "auto"
    assert distributed.resolve({"A1JAX_DISTRIBUTED": "1", "JAX_PLATFORMS": "cpu"}).mode == "auto"
    with pytest.raises(ValueError, match="SLURM_STEP_NODELIST, SLURM_PROCID, SLURM_LOCALID not set: .*srun"):
        distributed.resolve({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"})


def test_jobset_pod_finds_the_coordinator_from_its_host_name():
    env = {"A1JAX_NUM_PROCESSES": "8", "JOB_COMPLETION_INDEX": "5", "HOSTNAME": "train-workers-0-5",
           "A1JAX_JOBSET_SUBDOMAIN": "train"}
    plan = distributed.resolve(env)
    assert (plan.mode, plan.coordinator_address, plan.process_id) == ("jobset", "train-workers-0-0.train:8476", 5)
    plan = distributed.resolve({**env, "A1JAX_PROCESS_ID": "7", "A1JAX_COORDINATOR_PORT": "1234"})
    assert (plan.coordinator_address, plan.process_id) == ("train-workers-0-0.train:1234", 7)
    with pytest.raises(ValueError, match="HOSTNAME='laptop'"):
        distributed.resolve({**env, "HOSTNAME": "laptop"})


def test_one_process_sigterm_sets_the_stop_flag_says_so_once_and_close_restores_the_handler(capsys):
    before = signal.getsignal(signal.SIGTERM)
    stop = distributed.StopSignal()
    try:
        assert not stop.requested(0)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert stop.requested(1)
    finally:
        stop.close()
    assert capsys.readouterr().err.count("SIGTERM received: the run stops at its next stopping step") == 1
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("env, message", [
    ({"A1JAX_COORDINATOR_ADDRESS": "h:1", "A1JAX_NUM_PROCESSES": "two", "A1JAX_PROCESS_ID": "0"},
     "A1JAX_NUM_PROCESSES='two': expected an integer"),
    ({"A1JAX_COORDINATOR_ADDRESS": "h:1", "A1JAX_NUM_PROCESSES": "0", "A1JAX_PROCESS_ID": "0"},
     r"A1JAX_NUM_PROCESSES=0: expected an integer >= 1"),
    ({"A1JAX_COORDINATOR_ADDRESS": "h:1", "A1JAX_NUM_PROCESSES": "2", "A1JAX_PROCESS_ID": "2"},
     r"A1JAX_PROCESS_ID=2: expected an integer in \[0, 1\]"),
    ({"A1JAX_COORDINATOR_ADDRESS": "10.0.0.2", "A1JAX_NUM_PROCESSES": "2", "A1JAX_PROCESS_ID": "0"},
     "A1JAX_COORDINATOR_ADDRESS='10.0.0.2': expected host:port"),
    ({"A1JAX_COORDINATOR_ADDRESS": "h:99999", "A1JAX_NUM_PROCESSES": "2", "A1JAX_PROCESS_ID": "0"},
     "A1JAX_COORDINATOR_ADDRESS='h:99999': expected host:port"),
    ({"A1JAX_COORDINATOR_ADDRESS": "h:1", "A1JAX_NUM_PROCESSES": "2"}, "A1JAX_PROCESS_ID is not set"),
    ({"A1JAX_COORDINATOR_ADDRESS": "h:1", "A1JAX_PROCESS_ID": "0"}, "A1JAX_NUM_PROCESSES is not"),
    ({"A1JAX_NUM_PROCESSES": "2", "A1JAX_PROCESS_ID": "0"}, "A1JAX_COORDINATOR_ADDRESS is not"),
    ({"A1JAX_COORDINATOR_ADDRESS": "h:1", "A1JAX_NUM_PROCESSES": "2", "A1JAX_PROCESS_ID": "0",
      "A1JAX_LOCAL_DEVICE_IDS": "0,x"}, "A1JAX_LOCAL_DEVICE_IDS='0,x': expected comma-separated device ids"),
    ({"A1JAX_CPU_DEVICES": "-4"}, "A1JAX_CPU_DEVICES=-4: expected an integer >= 1"),
    ({"A1JAX_DISTRIBUTED": "maybe"}, "A1JAX_DISTRIBUTED='maybe'"),
    ({"A1JAX_NUM_PROCESSES": "4", "JOB_COMPLETION_INDEX": "4", "HOSTNAME": "js-w-0-4",
      "A1JAX_JOBSET_SUBDOMAIN": "js"}, r"JOB_COMPLETION_INDEX=4: expected an integer in \[0, 3\]"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        distributed.resolve(env)


# --- two processes train like one -----------------------------------------------------------------------------------

def write_trajectories(path, n: int = 96, seed: int = 0) -> str:
    """Short synthetic chats (20-60 tokens), so a tiny model trains on 128-token rows."""
    r = np.random.default_rng(seed)
    words = ("flight seat refund ticket order code test build error fix patch file run tool call search weather city "
             "price the a").split()
    domains = ("customer_service", "engineering", "general_agentic")
    with open(path, "w") as f:
        for i in range(n):
            say = lambda lo, hi: " ".join(r.choice(words, int(r.integers(lo, hi))))
            f.write(json.dumps({"id": f"synthetic/{i}", "source": "test", "domain": domains[i % 3], "messages": [
                {"role": "user", "content": say(4, 16)}, {"role": "assistant", "content": say(4, 24)}]}) + "\n")
    return str(path)


def tiny_flags(data: str, cache_dir: str, *extra: str) -> list[str]:
    """quickstart_8cpu (data=2 x fsdp=4, 8 rows) shrunk: 2 layers, hidden 32, the 32k Mistral vocabulary, T=128.

    Adam's eps is 1e-4, not 1e-8: sharded sums add in another order, and with a tiny eps m / sqrt(v) turns that fp
    noise in near-zero gradients into whole +-lr steps (measured with 1e-8: a few parameters 1.0e-5 to 1.4e-5 apart
    after 8 steps, while every loss agreed to 1e-5); with 1e-4 the parameters can be compared to 1e-5 as well."""
    return ["--config.model.overrides.vocab_size=32768", "--config.data.tokenizer=mistral_v3",
            "--config.optimizer.eps=1e-4",
            "--config.model.overrides.hidden_size=32", "--config.model.overrides.num_hidden_layers=2",
            "--config.model.overrides.full_attention_interval=2", "--config.data.seq_len=128",
            f"--config.data.sources=[{{'paths': [{data!r}]}}]", "--config.data.eval_sources=[]",
            f"--config.data.cache_dir={cache_dir}", f"--config.train.steps={STEPS}", "--config.train.log_every=1",
            "--config.eval.every=0", f"--config.checkpoint.every={STEPS}", "--config.checkpoint.async_save=false",
            *extra]


def losses(workdir) -> dict[int, float]:
    by_step = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "train/loss" in rec:
                by_step[rec["step"]] = rec["train/loss"]  # a resumed run rewrites later steps: keep the last
    return by_step


_make_iterator = pipeline.make_iterator


class _AsIfTwoProcesses:
    """One process reading what processes 0 and 1 of 2 read, rows of process 0 first (its devices come first in
    the mesh): the global batches of the 2-process run, for the 1-process reference."""

    def __init__(self, config):
        self._its = [_make_iterator(config, process_index=p, process_count=2) for p in range(2)]
        self.domains, self.counts = self._its[0].domains, {}

    def __iter__(self):
        return self

    def __next__(self):
        parts = [next(it) for it in self._its]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self):
        return [it.get_state() for it in self._its]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The 1-process, 8-device run on the 2-process run's global batches: (flags, its workdir, final state)."""
    root = tmp_path_factory.mktemp("multihost")
    flags = tiny_flags(write_trajectories(root / "chats.jsonl"), str(root / "cache"))
    exp = stages.validate(experiment.apply_overrides(experiment.load(QUICKSTART_8CPU), flags))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "make_iterator", lambda config, **_: _AsIfTwoProcesses(config))
        state = loop.train(exp, str(root / "one_process"))
    return flags, root / "one_process", state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _log_path(workdir, process: int) -> str:
    return os.path.join(os.path.dirname(workdir), f"{os.path.basename(workdir)}.{process}.log")


def _launch(workdir, flags, n: int = 2) -> list[subprocess.Popen]:
    """n processes of `a1jax train`, 4 virtual CPU devices each, one job via the A1JAX_* variables."""
    port = _free_port()
    procs = []
    for i in range(n):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", A1JAX_CPU_DEVICES="4",
                   A1JAX_COORDINATOR_ADDRESS=f"localhost:{port}", A1JAX_NUM_PROCESSES=str(n), A1JAX_PROCESS_ID=str(i),
                   JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1")
        with open(_log_path(workdir, i), "a") as log:  # the child keeps its own handle
            procs.append(subprocess.Popen([sys.executable, "-m", "a1jax.cli", "train", "--config", QUICKSTART_8CPU,
                                           "--workdir", str(workdir), *flags], env=env, cwd=REPO, stdout=log,
                                          stderr=subprocess.STDOUT))
    return procs


def _wait(procs, workdir, timeout: float = 600):
    deadline = time.time() + timeout
    with contextlib.ExitStack() as stack:
        for p in procs:
            stack.callback(lambda p=p: p.poll() is None and p.kill())
        for i, p in enumerate(procs):
            code = p.wait(timeout=max(deadline - time.time(), 1))
            log = open(_log_path(workdir, i)).read()
            assert code == 0, f"process {i} exited with {code}:\n{log[-3000:]}"


def _restore(workdir, step, like):
    """The checkpointed train state at `step`, on the shardings of `like` (this process's 8 devices)."""
    abstract = checkpoint.abstract_with_shardings(jax.eval_shape(lambda: like),
                                                  jax.tree.map(lambda x: x.sharding, like))
    ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    try:
        return ck.restore(step, abstract, data=False)[0]
    finally:
        ck.close()


def _saved_data_states(workdir, step) -> list:
    with open(os.path.join(workdir, "checkpoints", str(step), "data", "metadata")) as f:
        return json.load(f)["processes"]


def test_two_processes_train_like_one_process_with_eight_devices(reference, tmp_path):
    flags, one_workdir, one_state = reference
    workdir = tmp_path / "two_processes"
    _wait(_launch(workdir, flags), workdir)
    one, two = losses(one_workdir), losses(workdir)
    assert sorted(two) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([two[s] for s in sorted(two)], [one[s] for s in sorted(two)], rtol=0, atol=1e-5)
    # process 0 alone writes metrics: every step once
    steps = [json.loads(l)["step"] for l in open(workdir / "metrics.jsonl") if "train/loss" in l]
    assert steps == list(range(1, STEPS + 1))
    # the final checkpoint: the same parameters, and each process's own data position
    final = _restore(str(workdir), STEPS, one_state)
    for a, b in zip(jax.tree.leaves(final.params), jax.tree.leaves(one_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
    states = _saved_data_states(str(workdir), STEPS)
    assert [s["shard"] for s in states] == [[0, 2], [1, 2]]
    assert states[0]["iterator"] != states[1]["iterator"]
    with pytest.raises(checkpoint.CheckpointMismatch, match="data iterator states of 2 processes, but this run has 1"):
        checkpoint._this_process({"processes": states}, STEPS)


@pytest.mark.slow
def test_sigterm_on_one_process_stops_both_at_one_step_and_the_resume_matches(reference, tmp_path):
    flags, one_workdir, _ = reference
    for attempt in range(2):
        workdir = tmp_path / f"preempted{attempt}"
        procs = _launch(workdir, flags)
        deadline = time.time() + 600
        while not (workdir / "metrics.jsonl").exists() or not losses(workdir):  # step 1 is done
            if time.time() > deadline or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        else:
            break
        for p in procs:  # the failed attempt's processes: stopped before their logs are read
            p.poll() is None and p.kill()
            p.wait()
        logs = "".join(open(_log_path(workdir, i)).read() for i in range(2))
        # On a loaded 2-core machine gloo's first collective can time out (30 s) while the other process still
        # compiles: an infrastructure timeout, retried once in a fresh workdir; anything else is a failure.
        assert attempt == 0 and "Gloo context initialization failed" in logs, "training did not start"
    procs[1].send_signal(signal.SIGTERM)  # a preemption notice on one host
    _wait(procs, workdir)
    saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert saved and saved[-1] < STEPS, f"the run was not stopped early (checkpoints {saved})"
    stopped = saved[-1]
    assert max(losses(workdir)) == stopped
    for i in range(2):  # both processes stopped after the same step, and saved there
        assert f"SIGTERM: saving a checkpoint at step {stopped}" in open(_log_path(workdir, i)).read()
    _wait(_launch(workdir, flags), workdir)  # resume: each process from its own data position
    resumed, one = losses(workdir), losses(one_workdir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in sorted(resumed)], [one[s] for s in sorted(resumed)], rtol=0,
                               atol=1e-5)
