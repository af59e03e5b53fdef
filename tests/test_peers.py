"""benchmarks/peers.py: a1jax and HF transformers (torch eager) on the same converted weights, side by side.

The end-to-end test runs `--quick` with both sides (the HF one in the oracle venv; skipped without it, failed under
A1JAX_REQUIRE_ORACLE=1 like tests/oracle) and checks the table's six rows and the sanity block: the first-step losses
and gradient norms of the two frameworks agree and the greedy tokens are identical.
"""
import json
import os
import sys

import jax
import numpy as np
import pytest

from benchmarks import peers
from oracle.fixtures import oracle_or_skip

LABELS = ("train step 1 x 128", "train step 4 x 32", "forward 1 x 256", "prefill 8 x 32",
          "greedy decode 8 x 16 after 32", "start-up to first train step")


def test_bad_sides_and_a_missing_oracle_are_refused_before_any_work(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        peers.main(["--quick", "--sides", "a1jax,torch"])
    assert "--sides='a1jax,torch'" in capsys.readouterr().err
    monkeypatch.setenv("A1JAX_ORACLE_PYTHON", str(tmp_path / "no-python"))
    with pytest.raises(peers.OracleUnavailable, match="bash tests/oracle/setup_oracle.sh"):
        peers.main(["--quick", "--workdir", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists()


@pytest.mark.slow  # two processes; the a1jax one compiles six programs: 3-6 min cold on a busy 2-core CPU, 45 s warm
def test_quick_run_prints_six_rows_and_both_sides_agree(tmp_path, capsys, monkeypatch):
    # the a1jax side shares this session's compilation cache (reruns compile less; start-up is then a warm one)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
    out = tmp_path / "peers.json"
    with oracle_or_skip(peers.OracleUnavailable):
        rep = peers.main(["--quick", "--steps", "1", "--repeats", "1", "--json", str(out)])
    table = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(rep))
    assert [r["label"] for r in rep["rows"]] == list(LABELS)
    for r in rep["rows"]:
        assert r["label"] in table
        assert r["a1jax"] > 0 and r["hf"] > 0 and r["ratio"] > 0, r
    for side in ("a1jax", "hf"):
        res = rep["sides"][side]
        assert len(res["loadavg_before"]) == 3 and len(res["loadavg_after"]) == 3
        assert f"{side} before" in table
    s = rep["sanity"]
    np.testing.assert_allclose(s["first_loss"]["a1jax"], s["first_loss"]["hf"], rtol=1e-4)
    np.testing.assert_allclose(s["grad_norm"]["a1jax"], s["grad_norm"]["hf"], rtol=1e-4)
    np.testing.assert_allclose(s["second_loss"]["a1jax"], s["second_loss"]["hf"], rtol=1e-4)  # same AdamW update
    assert s["greedy_checked"] == 16 and s["greedy_identical"], rep["sides"]["a1jax"]["greedy_tokens"][0]
    assert "row 0's first 16 identical" in table


def test_profile_step_attributes_the_traced_step_to_the_model_parts(capsys):
    """benchmarks/profile_step.py: the trace's thunks map to the named scopes, every part of the model shows up, and
    the forward and backward passes of the mixers are told apart."""
    from benchmarks import profile_step
    out = profile_step.main(["--quick", "--shape", "1,128", "--top", "2"])
    parts = out["parts"]
    for part in ("deltanet", "attention", "mlp", "lm_head_loss", "optimizer"):
        assert sum(v for k, v in parts.items() if k.startswith(part + "/")) > 0, part
    assert parts.get("deltanet/fwd", 0) > 0 and parts.get("deltanet/bwd", 0) > 0
    assert "-- mlp:" in capsys.readouterr().out


FAKE_SIDE = r"""
import json, os, sys, time
sys.path.insert(0, {bench!r})
from peers_timing import gate
side, workdir = sys.argv[1], sys.argv[2]
started = time.time()
time.sleep(0.05)  # start-up and the first train step: ungated, as the real sides
spans = []
for _ in range({calls}[side]):
    gate()
    t = time.time()
    time.sleep(0.05)
    spans.append([t, time.time()])
print("a log line that is not the gate")
with open(os.path.join(workdir, side + ".json"), "w") as f:
    json.dump(dict(started=started, spans=spans), f)
"""


def test_interleaved_sides_take_turns_call_by_call(tmp_path, monkeypatch):
    """--interleave: the second side starts only once the first waits at its gate, every gated call of one side runs
    while the other waits (no two spans overlap, the sides alternate), and a side with more calls finishes alone."""
    calls = {"a1jax": 4, "hf": 3}
    script = FAKE_SIDE.format(bench=os.path.dirname(peers.HF_SCRIPT), calls=calls)
    monkeypatch.setattr(peers, "_side_command", lambda side, workdir, t0: [sys.executable, "-c", script, side, workdir])
    res = peers.run_interleaved(["a1jax", "hf"], str(tmp_path), single_thread=False, huge=False)
    a, h = res["a1jax"], res["hf"]
    assert [len(a["spans"]), len(h["spans"])] == [4, 3]
    assert h["started"] > a["started"] + 0.05  # the first side's start-up ran alone
    spans = sorted([(*s, "a") for s in a["spans"]] + [(*s, "h") for s in h["spans"]])
    assert [s[2] for s in spans] == ["a", "h", "a", "h", "a", "h", "a"]
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:])), spans
    for r in (a, h):
        assert len(r["loadavg_before"]) == 3 and len(r["loadavg_after"]) == 3 and r["wall_s"] > 0


def test_an_interleaved_side_that_fails_names_itself_and_stops_the_other(tmp_path, monkeypatch):
    """The failing side's error names it and shows its output; the other side's process does not run on."""
    bad = "import sys; print('boom: no checkpoint'); sys.exit(3)"
    script = FAKE_SIDE.format(bench=os.path.dirname(peers.HF_SCRIPT), calls={"a1jax": 2, "hf": 2})
    cmd = lambda side, workdir, t0: [sys.executable, "-c", script if side == "a1jax" else bad, side, workdir]
    monkeypatch.setattr(peers, "_side_command", cmd)
    with pytest.raises(RuntimeError, match=r"the hf side failed \(exit 3[\s\S]*boom: no checkpoint"):
        peers.run_interleaved(["a1jax", "hf"], str(tmp_path), single_thread=False, huge=False)
    assert not (tmp_path / "a1jax.json").exists()  # killed at its gate, not run to the end
