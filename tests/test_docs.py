"""The docs check: every command in README.md and docs/*.md runs here in dry-run form, so none can rot.

Commands are the lines of ```bash blocks and the `$ ` lines of ```console blocks (backslash continuations joined).
- `a1jax SUB ...`: parsed by the real CLI parser; for subcommands that take `--config`, the experiment file is loaded,
  its `--config.*` overrides applied and the whole config validated (what the command does before any work).
- `bash launch/X.sh ...`: launchers run with `--dry-run`; `quickstart.sh` and `test.sh` (the README's two set-up
  commands, which CI runs for real) are syntax-checked with `bash -n`.
- `python -m MODULE ...`: the module must exist.
Anything else fails the test: the docs may only show commands that the tests or CI exercise.
"""
import glob
import importlib.util
import os
import re
import shlex
import subprocess

import pytest

from a1jax import cli, stages
from a1jax.train import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
CONFIG_COMMANDS = {"train", "plan", "eval"}
SET_UP = {"launch/quickstart.sh", "launch/test.sh"}


def commands(path):
    out, block = [], None
    with open(path) as f:
        lines = f.read().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            block = None if block is not None else fence.group(1)
            i += 1
            continue
        if block in ("bash", "sh", "console"):
            text = line.strip()
            if block == "console":
                text = text[2:] if text.startswith("$ ") else ""
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + " " + lines[i].strip()
            text = re.sub(r"\s+#.*$", "", text) if not text.startswith("#") else ""
            if text:
                out.append((f"{os.path.relpath(path, ROOT)}:{i + 1}", text))
        i += 1
    return out


ALL = [c for path in DOCS for c in commands(path)]


def test_the_docs_have_commands():
    files = {where.split(":")[0] for where, _ in ALL}
    assert "README.md" in files and len(files) >= 4, files


def _check_a1jax(argv):
    parser = cli.build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_config_overrides", False):
        raise AssertionError(f"unknown arguments {extra}")
    if argv[0] in CONFIG_COMMANDS and getattr(args, "config", None):
        config = experiment.apply_overrides(experiment.load(os.path.join(ROOT, args.config)), extra)
        stages.validate(config)


@pytest.mark.parametrize("where,command", ALL, ids=[w for w, _ in ALL])
def test_command_runs_in_dry_run_form(where, command):
    argv = shlex.split(command)
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):  # leading VAR=value assignments
        argv = argv[1:]
    if argv and argv[0] in ("a1jax", ".venv/bin/a1jax"):
        _check_a1jax(argv[1:])
    elif argv[:1] == ["bash"] and argv[1].startswith("launch/"):
        script = argv[1]
        assert os.path.exists(os.path.join(ROOT, script)), f"{where}: no such script {script}"
        if script in SET_UP:
            r = subprocess.run(["bash", "-n", script], cwd=ROOT, capture_output=True, text=True)
        else:
            rest = argv[2:] if "--dry-run" in argv else argv[2:] + ["--dry-run"]
            r = subprocess.run(["bash", script, "--dry-run", *[a for a in rest if a != "--dry-run"]], cwd=ROOT,
                               capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{where}: {command}\n{r.stderr[-2000:]}"
    elif len(argv) >= 3 and argv[0].endswith("python") and argv[1] == "-m":
        assert importlib.util.find_spec(argv[2]) is not None, f"{where}: no module {argv[2]}"
    else:
        raise AssertionError(f"{where}: `{command}` is not a command the tests exercise; show it as prose or add "
                             f"a check to tests/test_docs.py")


def _source_files():
    out = subprocess.run(["git", "ls-files", "*.py", "*.sh"], cwd=ROOT, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.split() if not f.startswith("docs/spec/")]


def test_code_cites_docs_that_exist_here_and_no_tracker_numbers():
    """Docstrings and comments cite documents in this repository (docs/...), never ../shared, and no issue numbers:
    an installed a1jax, or a reader of one file, has neither the shared materials nor the tracker."""
    cited, bad = set(), []
    for f in _source_files():
        text = open(os.path.join(ROOT, f), encoding="utf-8").read()
        cited |= {(f, m) for m in re.findall(r"\bdocs/[\w/.-]+\.md", text)}
        bad += [f"{f}: {m}" for m in re.findall(r"\.\./shared/docs/\S+|[Ii]ssues? #?\d+", text)]
        bad += [f"{f}: bare {m}" for m in re.findall(r"(?<![\w/.-])(?:model|kernels)\.md\b", text)]
    missing = sorted(f"{f}: {d}" for f, d in cited if not os.path.isfile(os.path.join(ROOT, d)))
    assert not missing, missing
    assert not bad, bad
    assert any(d == "docs/spec/model.md" for _, d in cited)
