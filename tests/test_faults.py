"""Training faults, checkpoint integrity and broken teachers: the guard rejects a non-finite update, K
skips in a row stop the run in one line, a damaged checkpoint is never restored silently, a run whose checkpoints are
all damaged refuses to start over, and every bad teacher response is a counted failure that never reaches a loss."""
import dataclasses
import functools
import http.server
import json
import os
import shutil
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from a1jax import model, stages
from a1jax.cli import main as cli_main
from a1jax.distill import teachers as teacher_lib
from a1jax.train import checkpoint, steps
from a1jax.train.state import init_state
from test_train import QUICKSTART, _ctx, _toy_batch

SMALL = model.presets.tiny(hidden_size=16)


def _times_inf(tx):
    """`tx` followed by an infinite learning rate: finite gradients, non-finite update."""
    def update(grads, opt_state, params=None):
        updates, new_state = tx.update(grads, opt_state, params)
        return jax.tree.map(lambda u: u * jnp.inf, updates), new_state
    return optax.GradientTransformation(tx.init, update)


# --- the guard ----------------------------------------------------------------------------------------------------

def test_guard_rejects_a_non_finite_update_from_finite_gradients():
    cfg = model.presets.tiny()
    ctx = _ctx(cfg)
    state = init_state(cfg, ctx.tx, jax.random.key(0))
    step = jax.jit(functools.partial(steps.sft_step, dataclasses.replace(ctx, tx=_times_inf(ctx.tx))))
    after, m = step(state, _toy_batch(cfg))
    assert np.isfinite(float(m["grad_norm"]))  # the loss and gradient were fine: only the update is not
    assert int(m["skipped"]) == 1 and int(after.skipped_consecutive) == 1
    for new, old in zip(jax.tree.leaves(after.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(new, old)
    for new, old in zip(jax.tree.leaves(after.opt_state), jax.tree.leaves(state.opt_state)):
        np.testing.assert_array_equal(new, old)


@pytest.fixture
def one_device(monkeypatch):
    """`a1jax train` in this process on one device (the test session has 8 virtual ones)."""
    from a1jax.train import loop
    monkeypatch.setattr(loop, "run_stage", functools.partial(loop.run_stage, devices=jax.devices()[:1]))


def _cli_args(workdir, *extra):
    return ["train", "--config", QUICKSTART + ":smoke", "--workdir", str(workdir),
            "--config.model.overrides.hidden_size=16", "--config.data.batch_size=1", "--config.train.log_every=100",
            "--config.eval.every=0", "--config.checkpoint.async_save=false", *extra]


def test_k_skips_in_a_row_stop_the_run_at_the_kth_step_in_one_line(tmp_path, monkeypatch, capsys, one_device):
    real = stages.STAGES["sft"]

    def inf_lr_step(ctx, state, batch):
        return real.step(dataclasses.replace(ctx, tx=_times_inf(ctx.tx)), state, batch)

    monkeypatch.setitem(stages.STAGES, "sft", dataclasses.replace(real, step=inf_lr_step))
    code = cli_main(_cli_args(tmp_path, "--config.train.steps=8", "--config.train.max_consecutive_skips=3",
                              "--config.checkpoint.every=100"))
    err = capsys.readouterr().err
    assert code == 3
    stop = [line for line in err.splitlines() if "stopped:" in line]
    assert len(stop) == 1 and "stopping at step 3" in stop[0] and "max_consecutive_skips=3" in stop[0]
    assert "Traceback" not in err


# --- checkpoints ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A checkpoint directory with steps 1 and 2 (asynchronous saves), and the states saved."""
    d = tmp_path_factory.mktemp("pristine")
    ctx = _ctx(SMALL)
    state1 = init_state(SMALL, ctx.tx, jax.random.key(0))
    state2 = jax.tree.map(lambda x: x + 1 if x.dtype == jnp.float32 else x, state1)
    ck = checkpoint.Checkpointer(str(d), keep=3, async_save=True)
    ck.save(1, state1, {"it": 1}, {"c": 1})
    ck.save(2, state2, {"it": 2}, {"c": 1})
    ck.close()
    return d, state1, state2


def _copy(src, dst):
    shutil.copytree(src, dst)
    return checkpoint.Checkpointer(str(dst), keep=3, async_save=False)


def _array_files(step_dir):
    """The files of a step that hold array bytes (orbax's ocdbt data files), largest first."""
    found = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if os.sep + "d" + os.sep in
             os.path.join(r, f)]
    return sorted(found, key=os.path.getsize, reverse=True)


def test_every_step_has_a_manifest_of_its_files(two_steps):
    d, _, _ = two_steps
    for step in (1, 2):
        manifest = json.load(open(d / str(step) / checkpoint.MANIFEST))
        listed = set(manifest["files"])
        on_disk = {os.path.relpath(os.path.join(r, f), d / str(step)) for r, _, fs in os.walk(d / str(step))
                   for f in fs} - {checkpoint.MANIFEST}
        assert listed == on_disk and any("ocdbt" in f for f in listed)
        assert checkpoint.verify_manifest(str(d / str(step)))


@pytest.mark.parametrize("trial", range(6))
def test_random_byte_flips_are_never_restored_silently(two_steps, tmp_path, trial):
    d, state1, _ = two_steps
    r = np.random.default_rng(trial)
    ck = _copy(d, tmp_path / "c")
    files = _array_files(tmp_path / "c" / "2")
    target = files[r.integers(len(files))]
    size = os.path.getsize(target)
    n = int(r.integers(1, min(4096, size) + 1))  # up to 4 KiB of flipped bytes at a random offset
    at = int(r.integers(0, size - n + 1))
    with open(target, "r+b") as f:
        f.seek(at)
        chunk = bytearray(f.read(n))
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in chunk))
    step, restored, data, _ = ck.restore_latest(jax.eval_shape(lambda: state1))
    assert step == 1 and data == {"it": 1}  # the damage is caught, the previous step restored
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state1)):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "c" / "damaged-2").is_dir() and not (tmp_path / "c" / "2").exists()
    ck.close()


def test_a_step_damaged_twice_is_set_aside_under_a_new_name(two_steps, tmp_path):
    d, state1, _ = two_steps
    (tmp_path / "c").mkdir()
    shutil.copytree(d / "2", tmp_path / "c" / "damaged-2")  # set aside by an earlier run
    shutil.copytree(d / "1", tmp_path / "c" / "1")
    shutil.copytree(d / "2", tmp_path / "c" / "2")  # step 2 written again, and damaged again
    os.remove(_array_files(tmp_path / "c" / "2")[0])
    ck = checkpoint.Checkpointer(str(tmp_path / "c"), keep=3, async_save=False)
    step, *_ = ck.restore_latest(jax.eval_shape(lambda: state1))
    assert step == 1
    assert (tmp_path / "c" / "damaged-2").is_dir() and (tmp_path / "c" / "damaged-2.2").is_dir()
    ck.close()


def test_when_every_checkpoint_is_damaged_the_run_refuses_to_start_over(two_steps, tmp_path):
    d, state1, _ = two_steps
    ck = _copy(d, tmp_path / "c")
    for step in (1, 2):
        with open(_array_files(tmp_path / "c" / str(step))[0], "r+b") as f:
            f.write(b"\0" * 16)
    abstract = jax.eval_shape(lambda: state1)
    with pytest.raises(checkpoint.CheckpointError, match="every checkpoint is damaged.*--allow_fresh_start") as e:
        ck.restore_latest(abstract)
    assert "\n" not in str(e.value)
    # the same command again: nothing left to restore, but the set-aside ones say this is no fresh workdir
    with pytest.raises(checkpoint.CheckpointError, match="set aside by an earlier run.*--allow_fresh_start"):
        ck.restore_latest(abstract)
    assert ck.restore_latest(abstract, allow_fresh_start=True) is None  # said explicitly
    ck.close()
    assert sorted(os.listdir(tmp_path / "c")) == ["damaged-1", "damaged-2"]  # kept, never deleted


# --- teachers -------------------------------------------------------------------------------------------------------

V, K = 50, 3


def _good_entries(ids, seed=0):
    """vLLM-style prompt_logprobs for `ids` from a fixed toy distribution over V ids."""
    r = np.random.default_rng(seed)
    entries = [None]
    for j in range(1, len(ids)):
        logp = np.log(np.asarray(jax.nn.softmax(jnp.asarray(r.normal(size=V)))))
        top = np.argsort(-logp)[:K]
        e = {str(int(t)): {"logprob": float(logp[t]), "rank": i + 1} for i, t in enumerate(top)}
        e[str(int(ids[j]))] = {"logprob": float(logp[ids[j]]), "rank": int((logp > logp[ids[j]]).sum()) + 1}
        entries.append(e)
    return entries


def _corrupt(kind: str, ids, r) -> bytes:
    """A response body of one bad kind, at a random position."""
    entries = _good_entries(ids)
    j = int(r.integers(1, len(ids)))
    tok = next(t for t in entries[j] if t != str(int(ids[j])))
    if kind in ("nan", "inf", "positive"):
        entries[j][tok]["logprob"] = {"nan": float("nan"), "inf": float("inf"), "positive": 0.5}[kind]
    elif kind in ("oov", "id_2_31"):
        entries[j][str(V + 3 if kind == "oov" else 2 ** 31)] = entries[j].pop(tok)
    elif kind == "wrong_shape":
        entries = entries[:-1]
    elif kind == "entry_not_a_dict":
        entries[j] = [1, 2]
    elif kind == "sampled_missing":
        entries[j].pop(str(int(ids[j])))
    return json.dumps({"choices": [{"prompt_logprobs": entries}]}).encode()  # NaN/Infinity as Python writes them


class _Server:
    """A teacher on 127.0.0.1 that answers each request in the way `self.mode` says."""

    def __init__(self):
        self.mode, self.rng = "good", np.random.default_rng(0)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                ids = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["prompt"]
                mode = outer.mode
                try:
                    if mode == "bad_status_line":
                        self.wfile.write(b"NOT-HTTP garbage\r\n\r\n")
                        return
                    body = (json.dumps({"choices": [{"prompt_logprobs": _good_entries(ids)}]}).encode()
                            if mode in ("good", "truncated", "trickle", "http_500") else _corrupt(mode, ids, outer.rng))
                    self.send_response(500 if mode == "http_500" else 200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body) + (100 if mode == "truncated" else 0)))
                    self.end_headers()
                    if mode == "trickle":  # the whole body in ~4 s, never 1 s between two bytes
                        step = max(len(body) // 40, 1)
                        for i in range(0, len(body), step):
                            self.wfile.write(body[i:i + step])
                            self.wfile.flush()
                            time.sleep(0.1)
                        return
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if mode == "truncated":
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1/completions"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    s = _Server()
    yield s
    s.close()


def _one_segment_batch(seed=0, B=1, T=12):
    r = np.random.default_rng(seed)
    tokens = r.integers(0, V, (B, T)).astype(np.int32)
    seg = np.ones((B, T), np.int32)
    return {"tokens": tokens, "segment_ids": seg, "loss_mask": np.ones((B, T), np.float32)}


BAD_KINDS = {"nan": "nan", "inf": "inf", "positive": "positive_logprob", "oov": "oov_id", "id_2_31": "oov_id",
             "wrong_shape": "shape", "entry_not_a_dict": "shape", "sampled_missing": "shape",
             "truncated": "http", "bad_status_line": "http", "http_500": "http", "trickle": "timeout"}


@pytest.mark.parametrize("kind", sorted(BAD_KINDS))
def test_every_bad_teacher_response_is_a_counted_failure_with_its_reason(server, kind):
    t = teacher_lib.HttpTeacher(server.url, 1.0, k=K, vocab_size=V)
    batch = _one_segment_batch()
    server.mode = "good"
    out, stats = t.score(batch)
    assert stats["failed"] == 0 and out["valid"][0, :-1].all()  # the server works
    server.mode = kind
    out, stats = t.score(batch)  # never raises
    assert stats["failed"] == 1 and stats["reasons"] == {BAD_KINDS[kind]: 1}, stats["errors"]
    assert not out["valid"].any() and stats["invalid_tokens"] == int(batch["loss_mask"].sum())
    assert not np.isnan(out["topk_logp"]).any() and not np.isnan(out["sampled_logp"]).any()


class _Canned:
    """A teacher object that returns fixed targets (what a buggy local or remote teacher might)."""
    k = K

    def __init__(self, targets):
        self.targets = targets

    def score(self, batch):
        return self.targets, {"requests": 1, "failed": 0}


def _valid_targets(rows, T, seed=0):
    r = np.random.default_rng(seed)
    lp = np.log(r.dirichlet(np.ones(K + 1), size=(rows, T)))
    return {"topk_ids": r.integers(0, V, (rows, T, K)).astype(np.int32), "topk_logp": lp[..., :K].astype(np.float32),
            "sampled_logp": lp[..., 0].astype(np.float32), "tail_logp": lp[..., K].astype(np.float32),
            "valid": np.ones((rows, T), np.float32)}


@pytest.mark.parametrize("seed", range(4))
def test_route_drops_each_invalid_row_and_keeps_the_others(seed):
    r = np.random.default_rng(seed)
    rows, T = 4, 8
    batch = _one_segment_batch(seed, B=rows, T=T)
    batch.update(targets=batch["tokens"], positions=np.tile(np.arange(T), (rows, 1)))
    got = _valid_targets(rows, T, seed)
    bad_row = int(r.integers(rows))
    kind = ["nan", "posinf", "positive", "oov", "2**31", "neg_id"][int(r.integers(6))]
    p, k = int(r.integers(T)), int(r.integers(K))
    if kind in ("oov", "2**31", "neg_id"):
        got["topk_ids"] = got["topk_ids"].astype(np.int64)
        got["topk_ids"][bad_row, p, k] = {"oov": V, "2**31": 2 ** 31, "neg_id": -7}[kind]
    else:
        key = ["topk_logp", "sampled_logp", "tail_logp"][int(r.integers(3))]
        where = (bad_row, p, k) if key == "topk_logp" else (bad_row, p)
        got[key][where] = {"nan": np.nan, "posinf": np.inf, "positive": 0.25}[kind]
    out, stats = teacher_lib.route({0: _Canned(got)}, batch, [0] * rows, K, vocab_size=V)
    assert stats[0]["failures"] == 1 and sum(stats[0]["reasons"].values()) == 1
    assert not out["valid"][bad_row].any() and stats[0]["invalid_tokens"] == T
    assert all(out["valid"][i].all() for i in range(rows) if i != bad_row)
    for key in ("topk_logp", "sampled_logp", "tail_logp"):
        assert not np.isnan(out[key]).any() and not np.isposinf(out[key]).any()
    assert out["topk_ids"].min() >= -1 and out["topk_ids"].max() < V


def test_a_wrongly_shaped_teacher_output_drops_all_its_rows():
    batch = _one_segment_batch(B=2, T=8)
    got = _valid_targets(2, 6)  # six positions for a batch of eight
    out, stats = teacher_lib.route({0: _Canned(got)}, batch, [0, 0], K, vocab_size=V)
    assert stats[0]["failures"] == 2 and stats[0]["reasons"] == {"shape": 2} and not out["valid"].any()

