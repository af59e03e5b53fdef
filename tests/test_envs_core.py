"""Environment plumbing: the registry, tool dispatch errors, the calculator, BM25, the sandbox's limits, and the
demonstrations CLI whose output the data pipeline loads."""
import os
import socket
import time

import numpy as np
import pytest

from a1jax import envs
from a1jax.cli import main
from a1jax.envs import tools as T
from a1jax.envs.bm25 import BM25
from a1jax.envs.calculator import calculator, evaluate
from a1jax.envs.sandbox import run_python
from a1jax.rollout.toolcalls import ToolCall


# --- registry ------------------------------------------------------------------------------------------------------

def test_registry_lists_all_six_domains_and_builds_mine():
    assert {"search", "engineering", "science", "instruction_following", "tool_calling",
            "scientific_agents"} <= set(envs.names())
    for name in ("search", "engineering", "science", "scientific_agents"):
        assert envs.get(name).name == name


def test_unknown_domain_and_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="unknown environment 'nope'.*search"):
        envs.get("nope")
    with pytest.raises(ValueError, match="science.*bad option"):
        envs.get("science", colour="blue")


def test_plugins_register_like_builtins(monkeypatch):
    monkeypatch.setattr(envs.registry, "_FACTORIES", dict(envs.registry._FACTORIES))  # undone after the test

    @envs.register("test_plugin")
    def make(**options):
        return ("plugin", options)
    assert envs.get("test_plugin", k=1) == ("plugin", {"k": 1})
    assert "test_plugin" in envs.names()


def test_a_custom_search_backend_is_used_for_tool_calls():
    class Backend:
        def search(self, query):
            return [{"doc_id": "w1", "title": "Web", "snippet": f"you asked {query}"}]

        def open(self, doc_id):
            return f"page {doc_id}"

    env = envs.get("search", backend=Backend())
    task = next(env.tasks("test", 0, n=1, horizon=1))
    session = envs.Session(env, task)
    out = session.step([ToolCall("search", {"query": "hello"}), ToolCall("open", {"doc_id": "w1"})])
    assert out == ["1. [w1] Web\n   you asked hello", "page w1"]


def test_a_custom_sandbox_runs_the_python_tool_and_the_hidden_tests():
    from a1jax.envs.sandbox import SandboxResult

    class Remote:
        def __init__(self):
            self.codes = []

        def run(self, code):
            self.codes.append(code)
            return SandboxResult("remote says hi\n", "", 0, False)

    remote = Remote()
    env = envs.get("engineering", sandbox=remote)
    task = next(env.tasks("test", 0, n=1, horizon=1))
    assert envs.Session(env, task).step([ToolCall("python", {"code": "print(1)"})]) == [
        "exit status: 0\nstdout:\nremote says hi\n"]
    verdict = env.verify(task, {"messages": [{"role": "assistant", "content": "```python\ndef solve(x): pass\n```"}]})
    assert not verdict.success and "did not finish" in verdict.reason and len(remote.codes) == 2


def test_http_backend_is_constructed_without_network():
    from a1jax.envs.search import HttpSearchBackend
    assert HttpSearchBackend("http://localhost:1/").url == "http://localhost:1"


# --- tool errors are strings for the model --------------------------------------------------------------------------

@pytest.mark.parametrize("domain", ["search", "science", "scientific_agents", "engineering"])
def test_tool_errors_come_back_as_strings(domain):
    env = envs.get(domain)
    task = next(env.tasks("train", 0, n=1, horizon=1))
    tool = task.tools[0]["function"]
    first_param = tool["parameters"]["required"][0]
    calls = [ToolCall("no_such_tool", {}), ToolCall(tool["name"], {}),
             ToolCall(tool["name"], {**{p: "x" for p in tool["parameters"]["required"]},
                                     first_param: ["not", "a", "scalar"]}),
             ToolCall(tool["name"], {"bogus": 1, **{p: "x" for p in tool["parameters"]["required"]}})]
    out = envs.Session(env, task).step(calls)
    assert out[0].startswith("Error: unknown tool 'no_such_tool'; available:")
    assert out[1].startswith(f"Error: '{tool['name']}' is missing required argument(s): {first_param}")
    assert out[2].startswith(f"Error: argument '{first_param}'")
    assert out[3].startswith(f"Error: '{tool['name']}' got unknown argument(s) bogus")


def test_tool_failures_name_the_problem():
    sci = envs.get("science")
    task = next(sci.tasks("train", 0, n=1, horizon=1))
    s = envs.Session(sci, task)
    out = s.step([ToolCall("convert", {"value": 1, "from_unit": "km", "to_unit": "kg"}),
                  ToolCall("convert", {"value": 1, "from_unit": "parsec", "to_unit": "m"}),
                  ToolCall("calculator", {"expression": "__import__('os')"})])
    assert out[0] == "Error: cannot convert length (km) to mass (kg)"
    assert out[1].startswith("Error: unknown unit 'parsec'")
    assert out[2].startswith("Error: unsupported syntax")
    agents = envs.get("scientific_agents")
    task = next(agents.tasks("train", 0, n=1, horizon=1))
    out = envs.Session(agents, task).step([ToolCall("lookup", {"entity": "Kryptonite", "property": "density"}),
                                           ToolCall("lookup", {"entity": "Fe", "property": "colour"}),
                                           ToolCall("lookup", {"entity": "26", "property": "atomic_weight"}),
                                           ToolCall("lookup", {"entity": "helium", "property": "density"})])
    assert out[0].startswith("Error: no element 'Kryptonite'")
    assert out[1].startswith("Error: unknown property 'colour'")
    assert out[2] == "atomic_weight of iron (Fe): 55.845 g/mol"
    assert out[3] == "density of helium (He): not available"


def test_bad_horizon_split_and_n_are_value_errors():
    env = envs.get("search")
    for kwargs, match in [(dict(horizon=0), "horizon=0"), (dict(horizon=101), r"\[1, 100\]"),
                          (dict(horizon="8"), "horizon='8'")]:
        with pytest.raises(ValueError, match=match):
            list(env.tasks("test", 0, n=1, **kwargs))
    with pytest.raises(ValueError, match="split='dev'"):
        list(envs.get("science").tasks("dev", 0, n=1))
    with pytest.raises(ValueError, match="n=-1"):
        list(envs.get("engineering").tasks("test", 0, n=-1))


# --- calculator and BM25 --------------------------------------------------------------------------------------------

def test_calculator_is_arithmetic_only():
    assert calculator("2 * (3 + 4) ** 2 / 7") == "14"
    assert float(calculator("sqrt(2) * pi")) == pytest.approx(np.sqrt(2) * np.pi, rel=1e-11)
    for bad, msg in [("1/0", "division by zero"), ("9**9**9", "exponent"), ("x + 1", "unsupported"),
                     ("().__class__", "unsupported"), ("1 +", "cannot parse"), ("(-8) ** 0.5", "no finite real")]:
        with pytest.raises(T.ToolError, match=msg):
            evaluate(bad)


def test_bm25_ranks_the_document_with_rarer_matching_terms_first():
    docs = ["the cat sat on the mat", "the dog sat", "a cat and a cat and a cat", "unrelated words only"]
    index = BM25(docs)
    ranked = [i for i, _ in index.top("cat", 4)]
    assert ranked == [2, 0]  # term frequency wins, the others do not match
    assert [i for i, _ in index.top("dog sat", 2)] == [1, 0]
    assert index.top("zebra", 3) == []


# --- sandbox (the best-effort "subprocess" backend where a test reads host paths or pids; bwrap: test_sandbox.py) --

def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


def test_sandbox_runs_code_in_a_scratch_dir_that_is_removed():
    r = run_python("import os\nopen('f.txt', 'w').write('x')\nprint(os.getcwd())", backend="subprocess")
    assert r.exit_status == 0 and not r.timed_out
    scratch = r.stdout.strip()
    assert "a1jax_sandbox_" in scratch and not os.path.exists(scratch)


def test_sandbox_kills_the_process_group_at_the_time_limit_and_removes_the_scratch_dir():
    code = ("import os, time\nprint(os.getcwd(), flush=True)\nprint(os.getpid(), flush=True)\n"
            "if os.fork() == 0:\n    print(os.getpid(), flush=True)\n    time.sleep(60)\ntime.sleep(60)")
    start = time.time()
    r = run_python(code, timeout_s=1.0, allow_processes=True, backend="subprocess")  # bwrap: tests/test_sandbox.py
    assert r.timed_out and r.exit_status == -9
    assert time.time() - start < 10
    scratch, *pids = r.stdout.split()
    pids = [int(p) for p in pids]
    assert len(pids) == 2 and not os.path.exists(scratch)
    time.sleep(0.2)  # the orphaned grandchild is reaped by init
    assert not any(_alive(p) for p in pids)


def test_sandbox_blocks_network_and_processes():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        r = run_python(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                       f"print('connected')")
        assert r.exit_status != 0 and "connected" not in r.stdout
        assert "PermissionError: sandbox: socket" in r.stderr
    finally:
        server.close()
    r = run_python("import subprocess\nsubprocess.run(['true'])")
    assert "PermissionError: sandbox: subprocess.Popen is blocked" in r.stderr
    r = run_python("import ctypes")
    assert "PermissionError" in r.stderr


def test_sandbox_enforces_memory_limit_and_truncates_output():
    r = run_python("x = bytearray(1 << 30)\nprint('allocated')", memory_mb=200)
    assert r.exit_status != 0 and "MemoryError" in r.stderr and "allocated" not in r.stdout
    r = run_python("print('y' * 50000)", max_output=100)
    assert r.stdout.startswith("y" * 100) and "output truncated" in r.stdout and len(r.stdout) < 200


def test_sandbox_has_only_the_standard_library():
    r = run_python("import numpy")
    assert "ModuleNotFoundError" in r.stderr


# --- demonstrations ------------------------------------------------------------------------------------------------

def test_demos_cli_writes_records_the_data_pipeline_loads(tmp_path, capsys):
    from a1jax.data import tokenizers
    from a1jax.data.chat import tokenize_trajectory
    from a1jax.data.pipeline import PipelineConfig, Source, make_iterator
    from a1jax.data.records import read_records
    paths = []
    for domain, h in [("search", 3), ("science", 2), ("scientific_agents", 3), ("engineering", 2)]:
        out = tmp_path / f"{domain}.jsonl"
        assert main(["envs", "demos", "--domain", domain, "--n", "3", "--horizon", str(h), "--seed", "1",
                     "--out", str(out)]) == 0
        records = [r for _, r in read_records(out, strict=True)]
        assert len(records) == 3 and all(r["domain"] == domain for r in records)
        assert all(sum("tool_calls" in m for m in r["messages"]) == h for r in records)
        paths.append(str(out))
    tok = tokenizers.load("qwen3_5")
    tokens = tokenize_trajectory(records[0], tok)
    assert 0 < np.sum(tokens["loss_mask"]) < len(tokens["tokens"])
    config = PipelineConfig(sources=(Source(tuple(paths)),), seq_len=4096, batch_size=2,
                            cache_dir=str(tmp_path / "cache"))
    it = make_iterator(config)
    batch = next(it)
    assert batch["tokens"].shape == (2, 4096) and batch["loss_mask"].sum() > 0
    assert set(it.domains) == {"search", "science", "scientific_agents", "engineering"}
    assert "wrote 3 engineering demonstrations" in capsys.readouterr().out


def test_demos_cli_reports_bad_flags(tmp_path, capsys):
    out = str(tmp_path / "x.jsonl")
    assert main(["envs", "demos", "--domain", "nope", "--n", "2", "--out", out]) == 2
    assert "--domain='nope'" in capsys.readouterr().err
    assert main(["envs", "demos", "--domain", "science", "--n", "2", "--horizon", "0", "--out", out]) == 2
    assert "horizon=0" in capsys.readouterr().err
    assert main(["envs", "list"]) == 0
    assert "scientific_agents" in capsys.readouterr().out
