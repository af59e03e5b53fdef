"""Importers turn the real shipped tau-bench, ToolBench and SWE-agent data into valid trajectory records."""
import json
from pathlib import Path

import pytest

from a1jax import cli
from a1jax.data import schema
from a1jax.data.importers import import_records
from a1jax.data.importers.swe_agent import BASH_TOOL
from a1jax.data.records import SkipReport, read_records

AGENTIC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "agentic"
pytestmark = pytest.mark.skipif(not AGENTIC.exists(), reason=f"shared data not found at {AGENTIC}")


def _import(fmt, path, **kw):
    skips = SkipReport()
    return list(import_records(fmt, [path], domain="d", skips=skips, **kw)), skips


def test_tau_bench_trajectories_pass_through_and_few_shot_transcripts_are_reported():
    records, skips = _import("tau_bench", AGENTIC / "tau_bench")
    assert len(records) == 200
    assert dict(skips.counts) == {schema.UNSUPPORTED_RECORD: 88}  # the messages_display few-shot transcripts
    source = json.loads((AGENTIC / "tau_bench" / "gpt-4o-airline.json").read_text())
    assert [r["messages"] for r in records] == [entry["traj"] for entry in source]
    first = records[0]
    assert first["id"] == "tau_bench/gpt-4o-airline/task0/trial0"
    assert first["metadata"] == {"task_id": 0, "trial": 0, "reward": 0.0, "user_id": "mia_li_3668"}
    assert sum(len(m.get("tool_calls") or []) for r in records for m in r["messages"]) == 1164


def test_toolbench_legacy_function_calls_become_tool_calls_answered_by_tool_messages():
    records, skips = _import("toolbench", AGENTIC / "toolbench" / "answer")
    assert len(records) == 13
    assert dict(skips.counts) == {schema.UNSUPPORTED_RECORD: 2}  # answer trees without train_messages
    for record in records:
        roles = [m["role"] for m in record["messages"]]
        assert "function" not in roles and roles[:2] == ["system", "user"]
        assert record["tools"] and all(t["type"] == "function" for t in record["tools"])
        assert "Finish" in {t["function"]["name"] for t in record["tools"]}
        for i, message in enumerate(record["messages"]):
            if message["role"] == "tool":
                call = record["messages"][i - 1]["tool_calls"][0]
                assert message["tool_call_id"] == call["id"] and message["name"] == call["function"]["name"]
    record = next(r for r in records if r["id"] == "toolbench/G2/119_ChatGPT_DFS_woFilter_w2")
    assert record["metadata"]["dfs_retry_turns"] == [6]
    assert record["messages"][6]["content"].startswith("This is not the first time you try this task")


def test_toolbench_result_of_another_function_has_no_matching_call(tmp_path):
    answer = json.loads((AGENTIC / "toolbench/answer/G1_answer/10_ChatGPT_DFS_woFilter_w2.json").read_text())
    answer["answer_generation"]["train_messages"][-1][3]["name"] = "some_other_function"
    path = tmp_path / "G1_answer" / "bad.json"
    path.parent.mkdir()
    path.write_text(json.dumps(answer))
    records, skips = _import("toolbench", path)
    assert records == []
    assert skips.examples[schema.UNMATCHED_TOOL_RESULT] == [
        f"{path}: message 3: result of function 'some_other_function' does not answer the pending call "
        f"(transitaires_for_transitaires)"]
    with pytest.raises(ValueError, match="bad.json: message 3: result of function"):
        list(import_records("toolbench", [path], domain="d", strict=True))


def test_swe_agent_native_calls_are_kept_and_text_actions_become_bash_calls():
    records, skips = _import("swe_agent", AGENTIC / "swe_agent")
    assert len(records) == 22 and skips.total == 0
    native = [r for r in records if r["metadata"]["action_style"] == "native"]
    text = [r for r in records if r["metadata"]["action_style"] == "text"]
    assert len(native) == 5 and len(text) == 17
    assert all(r["tools"] == [] for r in native) and all(r["tools"] == [BASH_TOOL] for r in text)
    path = AGENTIC / "swe_agent" / "ctf__forensics__flash.traj"
    history = json.loads(path.read_text())["history"]
    record = next(r for r in text if r["id"] == "swe_agent/ctf__forensics__flash")
    assert [m["role"] for m in record["messages"]] == ["system", "user"] + ["assistant", "tool"] * 3 + ["assistant"]
    step = record["messages"][2]
    assert step["content"] == history[2]["thought"]
    call = step["tool_calls"][0]["function"]
    assert call["name"] == "bash"
    assert json.loads(call["arguments"]) == {"command": "strings flash_c8429a430278283c0e571baebca3d139.img | grep flag"}
    assert record["messages"][3] == {"role": "tool", "name": "bash", "content": history[3]["content"],
                                     "tool_call_id": step["tool_calls"][0]["id"]}


def test_swe_agent_demonstration_stays_a_user_turn():
    records, _ = _import("swe_agent", AGENTIC / "swe_agent" /
                         "test__gpt4__swe-bench-dev-easy_first_only__default__t-0.00__p-0.95__c-3.00__install-1__pydicom__pydicom-1458.traj")
    (record,) = records
    assert record["metadata"]["demonstration_turns"] == [1]
    assert record["messages"][1]["role"] == "user"
    assert record["messages"][1]["content"].startswith("Here is a demonstration")
    assert record["messages"][2]["role"] == "user"  # the task itself


def test_import_command_writes_valid_jsonl_and_strict_mode_fails_with_the_location(tmp_path, capsys):
    out = tmp_path / "tau.jsonl"
    rc = cli.main(["data", "import", "--format", "tau_bench", str(AGENTIC / "tau_bench"), "--out", str(out),
                   "--domain", "customer_service", "--limit", "5"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"wrote 5 records to {out}" in printed
    records = [r for _, r in read_records(out, strict=True)]
    assert len(records) == 5 and {r["domain"] for r in records} == {"customer_service"}

    rc = cli.main(["data", "import", "--format", "tau_bench", str(AGENTIC / "tau_bench" / "MockAirlineDomainEnv-few_shot.jsonl"),
                   "--out", str(tmp_path / "few.jsonl"), "--domain", "customer_service", "--strict"])
    assert rc == 2
    assert "MockAirlineDomainEnv-few_shot.jsonl:1: a few-shot `messages_display` transcript" in capsys.readouterr().err


def test_import_attaches_tool_schemas_given_on_the_command_line(tmp_path):
    tools = [{"type": "function", "function": {"name": "get_user_details", "parameters": {"type": "object"}}}]
    (tmp_path / "tools.json").write_text(json.dumps(tools))
    out = tmp_path / "tau.jsonl"
    cli.main(["data", "import", "--format", "tau_bench", str(AGENTIC / "tau_bench" / "gpt-4o-airline.json"),
              "--out", str(out), "--domain", "d", "--limit", "2", "--tools", str(tmp_path / "tools.json")])
    assert [r["tools"] for _, r in read_records(out)] == [tools, tools]
