"""Stage 3's teacher check (a1jax/distill/gate.py): a domain whose teacher does not beat the student on the
validation split is left out of distillation unless the config keeps it; the verdicts are written once and reused on
resume; intervals of the report's success figures."""
import json

import pytest

from a1jax.distill import gate, report
from a1jax.distill.settings import Envs, Rollout, TeacherSpec
from a1jax.envs import registry
from a1jax.envs.tools import SPLITS, split_of


def _check(tmp_path, monkeypatch, successes: dict, g: gate.Gate):
    """gate.check with greedy rollouts replaced by fixed success rates {(who, domain): rate}."""
    calls = []

    def fake_success(cfg, params, tok, domain, ro, *, n, horizons, split, seed=0, options=None):
        calls.append((cfg, domain, split, tuple(horizons), options))
        return {"success_rate": successes[(cfg, domain)], "n": n}, []

    monkeypatch.setattr(gate, "greedy_success", fake_success)
    monkeypatch.setattr("a1jax.train.checkpoint.load_trained_params", lambda workdir: ("teacher", {}))
    monkeypatch.setattr("a1jax.model.unbox", lambda p: p)
    teachers = {d: TeacherSpec(domain=d, workdir=f"/t/{d}") for d in ("search", "tool_calling")}
    envs = Envs(domains=("search", "tool_calling"), horizons=(1,), domain_horizons={"search": [2]},
                options={"tool_calling": {"tool_set": "apis"}})
    return gate.check(str(tmp_path), "student", {}, None, teachers, envs, Rollout(), g), calls


def test_a_teacher_that_does_not_beat_the_student_is_left_out(tmp_path, monkeypatch):
    rates = {("student", "search"): 0.3, ("teacher", "search"): 0.6,
             ("student", "tool_calling"): 0.4, ("teacher", "tool_calling"): 0.2}
    verdicts, calls = _check(tmp_path, monkeypatch, rates, gate.Gate(tasks=8))
    assert verdicts["search"]["distilled"] and not verdicts["tool_calling"]["distilled"]
    assert "does not beat" in verdicts["tool_calling"]["reason"]
    # every rollout of the check is on the validation split, at the domain's own horizons and options
    assert {c[2] for c in calls} == {"valid"}
    assert ("student", "search", "valid", (2,), None) in calls
    assert ("teacher", "tool_calling", "valid", (1,), {"tool_set": "apis"}) in calls
    saved = json.loads((tmp_path / gate.FILE).read_text())
    assert saved["domains"] == verdicts and gate.distilled(str(tmp_path)) == verdicts
    # a resumed run reads the verdicts: no rollouts, even if the models changed since
    verdicts2, calls2 = _check(tmp_path, monkeypatch, {k: 0.0 for k in rates}, gate.Gate(tasks=8))
    assert verdicts2 == verdicts and calls2 == []


def test_margin_and_keep(tmp_path, monkeypatch):
    rates = {("student", "search"): 0.3, ("teacher", "search"): 0.35,
             ("student", "tool_calling"): 0.4, ("teacher", "tool_calling"): 0.2}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    verdicts, _ = _check(tmp_path / "a", monkeypatch, rates, gate.Gate(tasks=8, margin=0.1, keep=("tool_calling",)))
    assert not verdicts["search"]["distilled"]  # 0.35 is not above 0.3 + 0.1
    assert verdicts["tool_calling"]["distilled"] and "config.gate.keep" in verdicts["tool_calling"]["reason"]
    verdicts, calls = _check(tmp_path / "b", monkeypatch, rates, gate.Gate(tasks=0))
    assert all(v["distilled"] for v in verdicts.values()) and calls == []


def test_validation_split_is_disjoint_from_train_and_test():
    assert SPLITS == ("train", "valid", "test")
    keys = [f"key-{i}" for i in range(4000)]
    share = {s: sum(split_of(k) == s for k in keys) / len(keys) for s in SPLITS}
    assert share["test"] == pytest.approx(0.2, abs=0.03) and share["valid"] == pytest.approx(0.1, abs=0.03)
    env = registry.get("tool_calling")
    ids = {s: {json.dumps([t.answer["initial_state"], t.messages], sort_keys=True)
               for t in env.tasks(s, 0, n=30, horizon=1)} for s in SPLITS}
    assert not (ids["valid"] & ids["train"]) and not (ids["valid"] & ids["test"])


def test_wilson_interval():
    lo, hi = report.wilson(64, 128)
    assert lo == pytest.approx(0.4142, abs=1e-3) and hi == pytest.approx(0.5858, abs=1e-3)
    assert report.wilson(0, 128)[0] == 0.0 and report.wilson(0, 128)[1] == pytest.approx(0.0291, abs=1e-3)
    assert report.wilson(128, 128)[1] == pytest.approx(1.0)


def test_tool_set_apis_shows_only_the_tools_of_the_requests_apis():
    full, apis = registry.get("tool_calling"), registry.get("tool_calling", tool_set="apis")
    a, b = list(full.tasks("train", 3, n=20, horizon=1)), list(apis.tasks("train", 3, n=20, horizon=1))
    assert [t.messages for t in a] == [t.messages for t in b]  # the same requests
    from a1jax.envs.tool_calling import APIS
    for t in b:
        shown = {s["function"]["name"] for s in t.tools}
        used = {c[0] for turn in t.answer["turns"] for c in turn}
        assert used <= shown < {s["function"]["name"] for s in a[0].tools}
        assert {APIS[n] for n in shown} == {APIS[n] for n in used}
        assert apis.verify(t, apis.solve(t)).success
    with pytest.raises(ValueError, match="tool_set"):
        registry.get("tool_calling", tool_set="some")
