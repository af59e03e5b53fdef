"""`a1jax generate` and `a1jax rollout` end to end on a converted tiny checkpoint with the real tokenizer."""
import json

import jax
import pytest

from a1jax import model as M
from a1jax.cli import main
from a1jax.convert import save_params


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = M.presets.tiny(vocab_size=248320, hidden_size=32, num_hidden_layers=2)
    d = tmp_path_factory.mktemp("ckpt")
    save_params(str(d), cfg, M.init(cfg, jax.random.PRNGKey(0)))
    return str(d)


def test_generate_prints_a_reply(ckpt, capsys):
    assert main(["generate", "--checkpoint", ckpt, "--prompt", "hi", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.strip()


def test_rollout_writes_one_valid_record_per_task(ckpt, tmp_path):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "domain": "test", "tools": tools,
                                         "environment": {"responses": {"f": "ok"}},
                                         "messages": [{"role": "user", "content": f"task {i}"}]}) + "\n"
                             for i in range(3)))
    out = tmp_path / "out.jsonl"
    assert main(["rollout", "--checkpoint", ckpt, "--tasks", str(tasks), "--out", str(out), "--batch-size", "2",
                 "--max-len", "512", "--max-new-tokens", "3"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in recs) == ["t0", "t1", "t2"]
    assert all(sum(r["loss_mask"]) == sum(t["new_tokens"] for t in r["turns"]) > 0 for r in recs)


def test_rollout_reports_a_missing_checkpoint(tmp_path, capsys):
    (tmp_path / "t").write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    assert main(["rollout", "--checkpoint", str(tmp_path / "nope"), "--tasks", str(tmp_path / "t"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


def test_rollout_config_errors_name_the_field(tmp_path, capsys):
    (tmp_path / "t").write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    (tmp_path / "c.json").write_text(json.dumps({"sampling": {"temprature": 0.5}}))
    assert main(["rollout", "--checkpoint", "x", "--tasks", str(tmp_path / "t"), "--out", str(tmp_path / "o"),
                 "--config", str(tmp_path / "c.json")]) == 2
    assert "temprature" in capsys.readouterr().err
