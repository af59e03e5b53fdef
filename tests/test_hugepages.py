"""glibc's huge-page tunable for large host buffers (a1jax/hugepages.py): the environment it builds, the re-exec of
`ensure()`, the `a1jax` command's check of A1JAX_HUGEPAGES, launch/env.sh and benchmarks.peers' allocator switch."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from a1jax import hugepages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNABLE = hugepages.TUNABLE


@pytest.fixture
def supported(monkeypatch):
    monkeypatch.setattr(hugepages.sys, "platform", "linux")
    monkeypatch.setattr(hugepages, "_glibc_version", lambda: (2, 36))
    monkeypatch.setattr(hugepages, "_thp_mode", lambda path=hugepages.THP: "madvise")


def test_environ_adds_the_tunable_and_keeps_the_others(supported):
    assert hugepages.environ({})["GLIBC_TUNABLES"] == TUNABLE
    env = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "PATH": "/bin"}
    out = hugepages.environ(env)
    assert out["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0:" + TUNABLE and out["PATH"] == "/bin"
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0"  # a copy: the input is not changed
    # another hugetlb value (2: hugetlbfs pages, which need reserved pages) is replaced, not duplicated
    assert hugepages.environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2:x=1"})["GLIBC_TUNABLES"] == "x=1:" + TUNABLE
    assert hugepages.environ({"GLIBC_TUNABLES": TUNABLE})["GLIBC_TUNABLES"] == TUNABLE


def test_environ_changes_nothing_where_the_tunable_cannot_apply(supported, monkeypatch):
    assert "GLIBC_TUNABLES" not in hugepages.environ({hugepages.SWITCH: "0"})
    monkeypatch.setattr(hugepages, "_glibc_version", lambda: (2, 31))  # before glibc knew malloc.hugetlb
    assert not hugepages.applies({}) and "GLIBC_TUNABLES" not in hugepages.environ({})
    monkeypatch.setattr(hugepages, "_glibc_version", lambda: None)  # musl, macOS
    assert not hugepages.applies({})
    monkeypatch.setattr(hugepages, "_glibc_version", lambda: (2, 36))
    monkeypatch.setattr(hugepages, "_thp_mode", lambda path=hugepages.THP: "never")
    assert not hugepages.applies({})


def test_a_bad_switch_value_is_named(supported):
    with pytest.raises(ValueError, match="A1JAX_HUGEPAGES='yes'.*expected 1 .* or 0"):
        hugepages.applies({hugepages.SWITCH: "yes"})


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hugepages._thp_mode(str(f)) == "madvise"
    assert hugepages._thp_mode(str(tmp_path / "missing")) == ""


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.SWITCH)}
    return dict(env, PYTHONPATH=ROOT, **extra)


def test_ensure_reexecutes_the_process_once_with_the_tunable():
    code = ("import os, sys; from a1jax import hugepages; hugepages.ensure(); "
            "print(os.getpid(), os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])")
    run = lambda **extra: subprocess.run([sys.executable, "-c", code, "a", "b"], env=_clean_env(**extra),
                                         capture_output=True, text=True, check=True).stdout.splitlines()
    lines = run()
    assert len(lines) == 1  # the re-executed process printed, the first one never reached the print
    expected = TUNABLE if hugepages.applies(_clean_env()) else ""
    assert lines[0].split(" ", 2)[1:] == [expected, "['a', 'b']"]
    off = run(**{hugepages.SWITCH: "0"})
    assert off[0].split(" ", 2)[1:] == ["", "['a', 'b']"]


def test_the_a1jax_command_rejects_a_bad_switch_in_one_line():
    proc = subprocess.run([sys.executable, "-m", "a1jax.cli", "summary", "--preset", "tiny"],
                          env=_clean_env(**{hugepages.SWITCH: "2"}), capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("a1jax: error: A1JAX_HUGEPAGES='2': expected 1 (huge pages for large buffers, "
                                   "the default) or 0 (off)")


@pytest.mark.parametrize("start, switch, expected", [
    ("", "", TUNABLE),
    ("glibc.malloc.tcache_count=0", "", "glibc.malloc.tcache_count=0:" + TUNABLE),
    (TUNABLE, "", TUNABLE),
    ("", "0", ""),
])
def test_launch_env_exports_the_tunable_once(start, switch, expected):
    env = _clean_env(**({"GLIBC_TUNABLES": start} if start else {}), **({hugepages.SWITCH: switch} if switch else {}))
    script = f'source "{ROOT}/launch/env.sh"; source "{ROOT}/launch/env.sh"; echo "${{GLIBC_TUNABLES:-}}"'
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == expected


def test_peers_runs_both_sides_in_the_same_allocator_environment(supported, monkeypatch):
    from benchmarks import peers
    monkeypatch.setenv("GLIBC_TUNABLES", "x=1")
    monkeypatch.delenv(hugepages.SWITCH, raising=False)
    on = [peers._side_env(side, False, True) for side in ("a1jax", "hf")]
    assert [e["GLIBC_TUNABLES"] for e in on] == ["x=1:" + TUNABLE] * 2
    monkeypatch.setenv("GLIBC_TUNABLES", "x=1:" + TUNABLE)
    off = [peers._side_env(side, False, False) for side in ("a1jax", "hf")]
    assert [(e["GLIBC_TUNABLES"], e[hugepages.SWITCH]) for e in off] == [("x=1", "0")] * 2
