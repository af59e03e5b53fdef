"""`a1jax data stats` and `a1jax data split` from the command line."""
import json
from pathlib import Path

import pytest

from a1jax import cli
from a1jax.data.records import read_records

QUICKSTART = Path(__file__).resolve().parents[1] / "data" / "quickstart"
MALFORMED = Path(__file__).parent / "data" / "malformed.jsonl"


def test_stats_prints_records_tokens_lengths_domains_and_skip_reasons(tmp_path, capsys):
    rc = cli.main(["data", "stats", str(QUICKSTART / "toolbench.jsonl"), str(MALFORMED),
                   "--cache-dir", str(tmp_path), "--seq-len", "4096"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert f"  {QUICKSTART / 'toolbench.jsonl'}: 12 records, 0 skipped" in out
    assert f"  {MALFORMED}: 2 records, 10 skipped" in out
    totals = next(line for line in out if line.startswith("records "))
    assert totals.startswith("records 14   tokens ")
    assert any(line.startswith("length  min ") for line in out)
    assert any(line.startswith("longer than seq_len=4096: ") for line in out)
    domains = {line.split()[0]: line.split() for line in out if line.startswith("  general_agentic") or
               line.startswith("  test ")}
    assert domains["general_agentic"][1] == "12" and domains["general_agentic"][3].endswith("%")
    assert domains["test"][1] == "2"
    assert "skipped: 10 records" in out
    assert "       2  tool result with no matching call" in out
    assert f"          e.g. {MALFORMED}:2: message 1: unknown role 'robot' (expected system, user, assistant or tool)" in out


def test_stats_strict_stops_with_the_location(tmp_path, capsys):
    rc = cli.main(["data", "stats", str(MALFORMED), "--cache-dir", str(tmp_path), "--strict"])
    assert rc == 2
    assert f"{MALFORMED}:2: message 1: unknown role 'robot'" in capsys.readouterr().err


def test_split_holds_out_whole_groups_deterministically(tmp_path, capsys):
    source = QUICKSTART / "tau_bench_airline.jsonl"
    args = ["data", "split", str(source), "--heldout", "6", "--group-by", "metadata.task_id", "--seed", "3"]
    assert cli.main(args + ["--train-out", str(tmp_path / "a.jsonl"), "--heldout-out", str(tmp_path / "b.jsonl")]) == 0
    train = [r for _, r in read_records(tmp_path / "a.jsonl")]
    held = [r for _, r in read_records(tmp_path / "b.jsonl")]
    assert len(train) + len(held) == 76 and len(held) >= 6
    assert not {r["metadata"]["task_id"] for r in train} & {r["metadata"]["task_id"] for r in held}
    # the choice depends on ids and seed, not on file order
    reversed_source = tmp_path / "reversed.jsonl"
    reversed_source.write_text("".join(reversed(source.read_text().splitlines(keepends=True))))
    cli.main(["data", "split", str(reversed_source), "--heldout", "6", "--group-by", "metadata.task_id", "--seed", "3",
              "--train-out", str(tmp_path / "c.jsonl"), "--heldout-out", str(tmp_path / "d.jsonl")])
    assert {r["id"] for _, r in read_records(tmp_path / "d.jsonl")} == {r["id"] for r in held}
    capsys.readouterr()
    assert cli.main(args[:3] + ["--heldout", "1", "--group-by", "metadata.nothing", "--train-out", str(tmp_path / "e"),
                                "--heldout-out", str(tmp_path / "f")]) == 2
    assert "has no field 'metadata.nothing' to group by" in capsys.readouterr().err


def test_quickstart_heldout_shares_no_tau_bench_task_with_training():
    train = {json.loads(line)["metadata"]["task_id"] for line in open(QUICKSTART / "tau_bench_airline.jsonl")}
    held = [json.loads(line) for line in open(QUICKSTART / "heldout.jsonl")]
    assert {r["domain"] for r in held} == {"customer_service", "general_agentic", "engineering"}
    assert not train & {r["metadata"]["task_id"] for r in held if r["domain"] == "customer_service"}
    train_ids = {json.loads(line)["id"] for name in ("tau_bench_airline", "toolbench", "swe_agent")
                 for line in open(QUICKSTART / f"{name}.jsonl")}
    assert not train_ids & {r["id"] for r in held}


def test_unknown_import_format_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        cli.main(["data", "import", "--format", "sharegpt", "x.json", "--out", "y.jsonl", "--domain", "d"])
    assert "invalid choice: 'sharegpt'" in capsys.readouterr().err
