"""benchmarks/ablation.py: every variant starts from the same stage-1 student and teachers, changes one
thing, and the script prints a table and writes ablation.json from the variants' own runs and test-split scores."""
import json
import os

import jax
import pytest

from a1jax import stages
from a1jax.train import experiment, loop
from benchmarks import ablation

DOMAIN = "tool_calling"


def test_each_variant_changes_one_thing_and_turns_the_teacher_check_off(tmp_path):
    root = str(tmp_path)
    configs = {v: ablation.get_config(f"root={root},variant={v},steps=8,domains={DOMAIN}:search")
               for v in ablation.VARIANTS}  # steps: a multiple of the recipe's config.rollout.reuse
    recipe = ablation.RECIPE + f":tiny,root={root},steps=8,domains={DOMAIN}:search"
    base = experiment.load(recipe)
    for v, c in configs.items():
        assert c.gate.tasks == 0 and c.train.steps == 8 and c.init_from == base.init_from
        stages.validate(c)
    a, b, c, d, e = (configs[v] for v in "abcde")
    assert [t["workdir"] for t in a.teachers] == [t["workdir"] for t in base.teachers]
    assert [t["workdir"] for t in b.teachers] == [os.path.join(root, f"teacher_{DOMAIN}")] * 2
    assert c.distill.policy == "off" and a.distill.policy == "on" and d.distill.estimator == "sampled"
    assert e.distill.policy == "mix" and e.distill.off_share == 0.5
    assert a.distill.estimator == "salient"
    with pytest.raises(ValueError, match="single_teacher='science': no teacher workdir .*teacher_science"):
        ablation.get_config(f"root={root},variant=b,single_teacher=science,domains={DOMAIN}:search")
    # any trained teacher may be variant b's one teacher, also one of a domain left out of the run
    os.makedirs(os.path.join(root, "teacher_science"))
    other = ablation.get_config(f"root={root},variant=b,single_teacher=science,domains={DOMAIN}")
    assert [t["workdir"] for t in other.teachers] == [os.path.join(root, "teacher_science")]


def _fake_workdir(root, name, seed):
    """A training workdir holding an untrained tiny-recipe model (seeded): stands in for the main job's stages."""
    c = ablation.get_config(f"root={root},steps=1,domains={DOMAIN}")
    c.init_from, c.seed, c.rollout.reuse = "", seed, 1
    run = loop.Run(stages.validate(c), os.path.join(root, name), devices=jax.devices()[:1])
    run.save(0, {"step": 0}, force=True)
    run.ckpt.wait()
    run.close()


@pytest.mark.slow  # two 1-step stage-3 runs and their scoring, each in its own process: ~90 s of CPU
def test_ablation_runs_the_variants_and_writes_the_table_and_json(tmp_path, capsys, monkeypatch):
    # the variants train in subprocesses: one CPU device each (conftest's 8 virtual devices would split the batch);
    # this process's backend starts first, with conftest's devices, so later tests in this worker keep them
    import jax
    jax.devices()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    root = str(tmp_path / "root")
    _fake_workdir(root, "sft", 0)
    _fake_workdir(root, f"teacher_{DOMAIN}", 1)
    out = str(tmp_path / "out")
    rc = ablation.main(["--root", root, "--steps", "1", "--n", "2", "--variants", "a,c", "--domains", DOMAIN,
                        "--out", out, "--set", "rollout.max_new_tokens=16", "--set", "rollout.max_turns=1",
                        "--set", "envs.tasks_per_domain=1", "--set", "rollout.batch_size=2",
                        "--set", "rollout.reuse=1"])
    printed = capsys.readouterr().out
    result = json.load(open(os.path.join(out, "ablation.json")))
    assert rc == 0, [r.get("error") for r in result["variants"]]
    assert [v["name"] for v in result["variants"]] == ["routed", "off_policy"]
    for v in result["variants"]:
        r = v["domains"][DOMAIN]
        assert v["steps"] == 1 and v["updates"] == 1 and v["rollout_tokens"] > 0 and r["n"] == 2
        assert r["success_ci"][0] <= r["success"] <= r["success_ci"][1] and v["mean"] == r["success"]
        metrics = [json.loads(x) for x in open(os.path.join(out, v["name"], "distill", "metrics.jsonl"))]
        assert v["rollout_tokens"] == sum(m.get(f"tokens/{DOMAIN}", 0) for m in metrics)
    assert "a routed" in printed and "c off_policy" in printed and "ablation.json" in printed
    # The recipe's report over the same workdirs (variant a as the student after): every model scored, both KLs
    # finite, each part timed, the figure written.
    from a1jax.distill import report
    rep = tmp_path / "rep"
    rep.mkdir()
    for name in ("sft", f"teacher_{DOMAIN}"):
        os.symlink(os.path.join(root, name), rep / name)
    os.symlink(os.path.join(out, "routed", "distill"), rep / "distill")
    got = report.build_report(str(rep), [DOMAIN], n=2)
    row = got["domains"][DOMAIN]
    assert row["n"] == 2 and all(0 <= row[k] <= 1 for k in ("before", "after", "teacher"))
    assert row["kl_before"] > 0 and row["kl_after"] > 0  # untrained models that differ
    assert set(row["seconds"]) == {"rollouts_before", "rollouts_after", "rollouts_teacher", "kl_before", "kl_after"}
    assert f"{DOMAIN} rollouts_before" in report.table(got) and not row["cached"]
    report.figure(got, str(rep / "report.png"))
    assert (rep / "report.png").read_bytes()[:4] == b"\x89PNG"
    # Again: the student before and the teacher come from ROOT/report_cache/ (only the student after is decoded),
    # with the figures a fresh report computed; weights that change miss the cache.
    decoded = []
    real = report.rollouts_on_test
    monkeypatch.setattr(report, "rollouts_on_test", lambda cfg, params, *a, **k: (decoded.append(params),
                                                                                    real(cfg, params, *a, **k))[1])
    again = report.build_report(str(rep), [DOMAIN], n=2)["domains"][DOMAIN]
    assert len(decoded) == 1 and again["cached"] and set(again["seconds"]) == {"rollouts_after", "kl_after"}
    for key in report.CACHED + ("after", "kl_after"):
        assert again[key] == pytest.approx(json.loads(json.dumps(row[key]))), key  # tuples come back as lists
    assert "from report_cache/" in report.table({**got, "domains": {DOMAIN: again}})
    os.unlink(rep / "sft")
    os.symlink(os.path.join(root, f"teacher_{DOMAIN}"), rep / "sft")  # another student before: no cache hit
    assert not report.build_report(str(rep), [DOMAIN], n=2)["domains"][DOMAIN]["cached"] and len(decoded) == 4
    key = report._cache_path(str(rep), {"domain": DOMAIN})
    monkeypatch.setattr(report, "code_digest", lambda: "another a1jax")  # changed sources: another key
    assert report._cache_path(str(rep), {"domain": DOMAIN}) != key
    with pytest.raises(SystemExit):  # a root without the main job's workdirs is refused up front
        ablation.main(["--root", str(tmp_path / "empty"), "--domains", DOMAIN])
