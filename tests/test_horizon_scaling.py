"""The horizon-scaling experiment (experiments/horizon_scaling.py, benchmarks/horizon_scaling.py): students see the
same number of training tokens, and the quick run writes the table and the plot with one line per training horizon."""
import json
import struct

import pytest

from a1jax.envs import registry
from a1jax.train import experiment as experiment_lib
from benchmarks import horizon_scaling as hs

EXP = hs.experiment()


def test_each_student_trains_on_its_own_horizon_with_the_shared_model(tmp_path):
    root = str(tmp_path)
    base = experiment_lib.load(f"{hs.EXPERIMENT}:root={root}")
    assert EXP.mixture(1) == (1,) and EXP.mixture(4) == (1, 2, 4) and EXP.mixture(12) == (1, 2, 4, 8, 12)
    assert EXP.mixture(16) == (1, 2, 4, 8, 16) and EXP.mixture(16, fixed=True) == (16,)
    for h in (1, 16):
        c = EXP.get_config(f"root={root},h={h},steps=7")
        mix = EXP.mixture(h)  # every power of two up to h, each drawn equally often
        assert [s["paths"] for s in c.data.sources] == [[EXP.demos_path(root, d, x)] for d in EXP.DOMAINS for x in mix]
        assert {s["weight"] for s in c.data.sources} == {1.0 / len(mix)}
        fixed = EXP.get_config(f"root={root},h={h},fixed,domains=search")  # the 2026-12-06 design, one domain
        assert [s["paths"] for s in fixed.data.sources] == [[EXP.demos_path(root, "search", h)]]
        assert c.train.steps == 7 and c.data.seq_len == EXP.SEQ_LEN
        assert c.model.to_dict() == base.model.to_dict() and c.data.tokenizer == base.data.tokenizer
        for d in EXP.DOMAINS:  # horizon = tool calls in both domains (search's depend on each other)
            task = next(iter(registry.get(d).tasks("train", 0, n=1, horizon=h)))
            calls = [m for m in registry.get(d).solve(task)["messages"] if m.get("tool_calls")]
            assert len(calls) == h
    with pytest.raises(ValueError, match="h='0'"):
        EXP.get_config("h=0")
    with pytest.raises(ValueError, match="unknown key 'horizon'"):
        EXP.get_config("horizon=4")


def test_steps_for_tokens_stops_at_the_first_batch_that_reaches_the_budget(tmp_path):
    root = str(tmp_path)
    hs.write_demos(root, EXP, [1, 2, 4], tokens=6000)
    plans = {}
    for h in (1, 4):
        config = EXP.get_config(f"root={root},h={h},quick")
        plans[h] = plan = hs.steps_for_tokens(config, 6000)
        assert plan["tokens"] >= 6000
        assert hs.steps_for_tokens(config, 6000, max_steps=plan["steps"] - 1)["tokens"] < 6000  # one step fewer
        assert 0 < plan["supervised_tokens"] < plan["tokens"]
        assert 0 < plan["fill"] <= 1
    # matched on tokens, not records or steps: the two students' budgets agree within one row
    assert abs(plans[1]["tokens"] - plans[4]["tokens"]) <= EXP.QUICK["seq_len"]


def test_budgets_grow_with_the_eval_horizon_and_fit_the_model():
    model_max = EXP.tiny.TINY_MODEL["max_position_embeddings"]
    prev = None
    for h in (1, 2, 4, 8, 16, 32):
        b = EXP.eval_budgets(h)
        assert b["max_turns"] == h + 2 and b["max_len"] <= model_max
        assert prev is None or b["max_tokens"] > prev["max_tokens"]
        prev = b
    ev = EXP.get_config("").envs_eval  # `a1jax eval` gets the longest eval horizon's budgets
    assert ev.max_turns == max(EXP.EVAL_HORIZONS) + 2 and ev.max_len <= model_max and ev.n == EXP.EVAL_TASKS
    assert hs.resolvable_difference(64) == pytest.approx(0.248, abs=0.002)  # 2.80 * sqrt(0.5 / 64)
    assert hs.resolvable_difference(256) < hs.resolvable_difference(64)


def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow  # a 3-step warm-up, two 3-step students and their evaluation, in this process: about 1-2 min
def test_quick_run_writes_the_table_json_and_plot(tmp_path, capsys):
    root = tmp_path / "horizon"
    assert hs.main(["--quick", "--inline", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    result = json.loads((root / "horizon_scaling.json").read_text())
    assert result["train_horizons"] == [1, 2] and result["eval_horizons"] == [1, 2] and result["n"] == 2
    assert [s["h"] for s in result["students"]] == [1, 2]
    for s in result["students"]:
        assert s["tokens"] >= result["tokens_per_student"] and s["steps"] >= 1
        for d in EXP.DOMAINS:
            for h in ("1", "2"):
                cell = s["eval"][d][h]
                assert cell["n"] == 2 and 0 <= cell["successes"] <= 2 and sum(cell["terminations"].values()) == 2
                lo, hi = cell["ci"]
                assert 0 <= lo <= cell["success"] <= hi <= 1
    rows = [ln for ln in out.splitlines() if ln.split()[:1] and ln.split()[0] in EXP.DOMAINS]
    assert len(rows) == len(EXP.DOMAINS) * 2  # one row per domain and student
    assert all(len([c for c in ln.split() if c.startswith("[")]) == 2 for ln in rows)  # one cell per eval horizon
    assert "differ detectably" in out
    width, height = _png_size(root / "horizon_scaling.png")
    assert (width, height) == (int(4.2 * len(EXP.DOMAINS) * 120), int(3.4 * 120))  # one panel per domain
