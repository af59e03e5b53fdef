"""The allocator for large host buffers (a1jax/hugepages.py): glibc's huge-page tunable and a preloaded tcmalloc, the
environment it builds, the re-exec of `ensure()`, the `a1jax` command's check of its switches, launch/env.sh and
benchmarks.peers' allocator switch."""
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
    monkeypatch.setattr(hugepages, "LIB_DIRS", ())  # no tcmalloc installed, unless a test puts one in LIB_DIRS


def _loaded_library(tmp_path, name: str) -> str:
    """A real shared library under `name` (a link to the libm this interpreter has loaded): preloading it is
    harmless, so subprocesses started with it in LD_PRELOAD run normally."""
    with open("/proc/self/maps") as f:
        libm = next(line.split()[-1] for line in f if "/libm.so" in line or "/libm-" in line)
    link = tmp_path / name
    link.symlink_to(libm)
    return str(link)


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
    drop = hugepages.ALLOCATOR_VARS + (hugepages.SWITCH, hugepages.TCMALLOC_SWITCH)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return dict(env, PYTHONPATH=ROOT, **extra)


def test_tcmalloc_is_preloaded_first_once_and_removed_for_the_defaults(supported, tmp_path, monkeypatch):
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    assert hugepages.tcmalloc({}) == ""  # none installed: LD_PRELOAD is left alone
    assert "LD_PRELOAD" not in hugepages.environ({})
    lib.write_bytes(b"")
    monkeypatch.setattr(hugepages, "LIB_DIRS", (str(tmp_path / "missing"), str(tmp_path)))
    out = hugepages.environ({"LD_PRELOAD": "libother.so"})
    assert out["LD_PRELOAD"] == f"{lib} libother.so" and out[hugepages.QUIET[0]] == hugepages.QUIET[1]
    assert hugepages.environ(out) == out  # already there: nothing added twice
    assert hugepages.changes(out) == {}
    off = hugepages.environ(out, on=False)
    assert off["LD_PRELOAD"] == "libother.so" and hugepages.QUIET[0] not in off and off[hugepages.SWITCH] == "0"
    assert "LD_PRELOAD" not in hugepages.environ({"LD_PRELOAD": str(lib)}, on=False)
    assert "LD_PRELOAD" not in hugepages.environ({hugepages.TCMALLOC_SWITCH: "0"})  # the tunable alone
    assert hugepages.environ({hugepages.TCMALLOC_SWITCH: "0"})["GLIBC_TUNABLES"] == TUNABLE
    assert "LD_PRELOAD" not in hugepages.environ({hugepages.SWITCH: "0"})  # the allocator left alone
    other = tmp_path / "libtcmalloc.so.4"
    other.write_bytes(b"")
    assert hugepages.environ({hugepages.TCMALLOC_SWITCH: str(other)})["LD_PRELOAD"] == str(other)
    with pytest.raises(ValueError, match=r"A1JAX_TCMALLOC='/no/such/lib.so': expected 1 .* does not exist"):
        hugepages.environ({hugepages.TCMALLOC_SWITCH: "/no/such/lib.so"})


def test_ensure_reexecutes_the_process_once_with_the_allocator(tmp_path):
    code = ("import os, sys; from a1jax import hugepages; hugepages.ensure(); "
            "print(os.getpid(), repr(os.environ.get('GLIBC_TUNABLES', '')), repr(os.environ.get('LD_PRELOAD', '')), "
            "sys.argv[1:])")
    run = lambda **extra: subprocess.run([sys.executable, "-c", code, "a", "b"], env=_clean_env(**extra),
                                         capture_output=True, text=True, check=True)
    proc = run()
    assert len(proc.stdout.splitlines()) == 1  # the re-executed process printed, the first one never reached the print
    tunable = TUNABLE if hugepages.applies(_clean_env()) else ""
    lib = hugepages.tcmalloc(_clean_env())
    assert proc.stdout.split(" ", 1)[1].strip() == f"{tunable!r} {lib!r} ['a', 'b']"
    assert proc.stderr == ""  # tcmalloc reports nothing
    fake = _loaded_library(tmp_path, "libtcmalloc_test.so")
    chosen = run(**{hugepages.TCMALLOC_SWITCH: fake})
    assert chosen.stdout.split(" ", 1)[1].strip() == f"{tunable!r} {fake!r} ['a', 'b']"
    off = run(**{hugepages.SWITCH: "0"})
    assert off.stdout.split(" ", 1)[1].strip() == "'' '' ['a', 'b']"


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


def test_peers_runs_both_sides_in_the_same_allocator_environment(supported, monkeypatch, tmp_path):
    from benchmarks import peers
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    monkeypatch.setattr(hugepages, "LIB_DIRS", (str(tmp_path),))
    monkeypatch.setenv("GLIBC_TUNABLES", "x=1")
    for name in (hugepages.SWITCH, hugepages.TCMALLOC_SWITCH, "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    on = [peers._side_env(side, False, True) for side in ("a1jax", "hf")]
    assert [(e["GLIBC_TUNABLES"], e["LD_PRELOAD"]) for e in on] == [
        ("x=1:" + TUNABLE, str(tmp_path / "libtcmalloc_minimal.so.4"))] * 2
    monkeypatch.setenv("GLIBC_TUNABLES", "x=1:" + TUNABLE)
    monkeypatch.setenv("LD_PRELOAD", on[0]["LD_PRELOAD"])
    off = [peers._side_env(side, False, False) for side in ("a1jax", "hf")]
    assert [(e["GLIBC_TUNABLES"], e[hugepages.SWITCH], "LD_PRELOAD" in e) for e in off] == [("x=1", "0", False)] * 2


def test_launch_env_exports_tcmalloc_once_after_the_setup(tmp_path):
    fake = _loaded_library(tmp_path, "libtcmalloc_test.so")
    script = (f'source "{ROOT}/launch/env.sh"; a1jax_export_allocator; a1jax_export_allocator; '
              'echo "${LD_PRELOAD:-}|${TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD:-}"')
    run = lambda **extra: subprocess.run(["bash", "-c", script], env=_clean_env(**extra), capture_output=True,
                                         text=True, check=True).stdout.strip()
    assert run(**{hugepages.TCMALLOC_SWITCH: fake}) == f"{fake}|{hugepages.QUIET[1]}"
    assert run(**{hugepages.TCMALLOC_SWITCH: "0"}) == "|"


def test_the_allocator_benchmark_gives_each_allocator_its_own_environment(supported, tmp_path, monkeypatch):
    from benchmarks import allocator
    monkeypatch.setenv("LD_PRELOAD", "libother.so")
    assert allocator.allocator_env("tcmalloc") is None  # not installed: skipped
    (tmp_path / "libtcmalloc_minimal.so.4").write_bytes(b"")
    monkeypatch.setattr(hugepages, "LIB_DIRS", (str(tmp_path),))
    system, huge, tc = (allocator.allocator_env(a) for a in allocator.ALLOCATORS)
    assert system[hugepages.SWITCH] == "0" and "GLIBC_TUNABLES" not in system and "LD_PRELOAD" not in system
    assert huge["GLIBC_TUNABLES"] == TUNABLE and "LD_PRELOAD" not in huge
    assert tc["GLIBC_TUNABLES"] == TUNABLE and tc["LD_PRELOAD"] == str(tmp_path / "libtcmalloc_minimal.so.4")
    assert all(e["JAX_PLATFORMS"] == "cpu" for e in (system, huge, tc))


@pytest.mark.slow  # two processes that compile the smoke model's train step: about 45 s
def test_the_allocator_benchmark_times_every_gap(capsys):
    from benchmarks import allocator
    out = allocator.main(["--quick", "--gaps", "0,0.2", "--repeats", "1", "--allocators", "system,hugepages"])
    assert list(out["results"]) == ["system", "hugepages"]
    for res in out["results"].values():
        assert set(res["times"]) == {"0.0", "0.2"} and all(t[0] > 0 for t in res["times"].values())
    assert "free page reporting to the host:" in capsys.readouterr().out
