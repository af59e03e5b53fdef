"""The synthetic copy warm-up (a1jax/train/warmup.py): rows, learning, the `a1jax warmup` command's files and refusals,
and that a training run starts from what it wrote."""
import json
import os

import jax
import numpy as np
import pytest

from a1jax import cli
from a1jax.model import presets
from a1jax.train import warmup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, full_attention_interval=2, tie_word_embeddings=True)


def test_copy_rows_repeat_their_ids_after_the_separator():
    s = warmup.CopySettings(batch=5, length=7)
    rows = warmup.copy_rows(np.random.default_rng(0), s, 100)
    assert rows.shape == (5, 15) and rows.dtype == np.int32
    np.testing.assert_array_equal(rows[:, :7], rows[:, 8:])
    assert (rows[:, 7] == s.separator).all() and rows[:, :7].min() >= s.first_id and rows.max() < 100
    with pytest.raises(ValueError, match="vocab_size=11 leaves no ids"):
        warmup.copy_rows(np.random.default_rng(0), s, 11)
    with pytest.raises(ValueError, match="steps=0; expected an integer >= 1"):
        warmup.CopySettings(steps=0)
    with pytest.raises(ValueError, match="learning_rate=0; expected > 0"):
        warmup.CopySettings(learning_rate=0)


def test_variable_copy_rows_open_both_copies_with_the_separator_and_the_mask_covers_the_second():
    s = warmup.CopySettings(batch=64, length=6, min_length=2)
    rows = warmup.copy_rows(np.random.default_rng(0), s, 100, variable=True)
    mask = warmup.copy_mask(rows, s.separator)
    assert rows.shape == (64, 14) and mask.shape == (64, 13)
    lengths = set()
    for row, m in zip(rows, mask):
        seps = np.flatnonzero(row == s.separator)
        assert len(seps) == 2 and seps[0] % 2 == 0, row  # the filler before the first is 2 (L - l) ids
        l = len(row) - 1 - seps[1]
        lengths.add(l)
        assert seps[1] - seps[0] == l + 1 and seps[0] == 2 * (s.length - l)
        np.testing.assert_array_equal(row[seps[0] + 1:seps[1]], row[seps[1] + 1:])
        # inputs from the second separator on predict the copy; nothing before it is supervised
        np.testing.assert_array_equal(m, np.arange(len(row) - 1) >= seps[1])
    assert lengths == set(range(2, 7))
    # the fixed rows' mask is the second half, as before
    fixed = warmup.copy_rows(np.random.default_rng(0), warmup.CopySettings(batch=3, length=5), 100)
    np.testing.assert_array_equal(warmup.copy_mask(fixed, 1), np.tile(np.arange(10) >= 5, (3, 1)))
    for bad in (-1, 7):
        with pytest.raises(ValueError, match=f"min_length={bad}; expected 0"):
            warmup.CopySettings(length=6, min_length=bad)


def test_the_copy_loss_falls():
    cfg = presets.tiny(**SMALL)
    _, first = warmup.copy_warmup(cfg, warmup.CopySettings(steps=1, batch=8, length=8), log=lambda _: None)
    _, later = warmup.copy_warmup(cfg, warmup.CopySettings(steps=60, batch=8, length=8, learning_rate=1e-2),
                                  log=lambda _: None)
    assert later["loss"] < first["loss"] - 0.3, (first, later)


def test_the_warmup_moves_to_variable_offsets_after_fixed_steps():
    cfg = presets.tiny(**SMALL)
    lines = []
    s = warmup.CopySettings(steps=3, batch=4, length=6, min_length=2, fixed_steps=2)
    assert [s.variable(i) for i in (1, 2, 3)] == [False, False, True]
    assert not warmup.CopySettings(steps=3, min_length=0, fixed_steps=0).variable(3)
    _, summary = warmup.copy_warmup(cfg, s, log=lines.append)
    assert "(fixed offset)" in lines[0] and "(variable offset)" in lines[-1], lines
    assert set(summary) >= {"learned_at", "variable_learned_at"}
    with pytest.raises(ValueError, match="variable rows need min_length"):
        warmup.copy_rows(np.random.default_rng(0), warmup.CopySettings(min_length=0), 100, variable=True)


def test_warmup_command_writes_a_checkpoint_that_train_starts_from(tmp_path, capsys):
    from a1jax.train import checkpoint, vocabulary
    config = os.path.join(REPO, "experiments", "recipe_tiny_sft.py")
    out = tmp_path / "warmup"
    assert cli.main(["warmup", "--config", config, "--out", str(out), "--steps", "2", "--batch", "2"]) == 0
    done = json.loads((out / warmup.DONE).read_text())
    assert done["steps"] == 2 and done["settings"]["batch"] == 2
    assert vocabulary.recorded(str(out))["tokenizer"] == "qwen3_5_compact"
    cfg, params = checkpoint.load_init_params(str(out))
    assert cfg.vocab_size == 4096 and cfg.tie_word_embeddings
    # a finished warm-up is never overwritten; an interrupted one is named
    assert cli.main(["warmup", "--config", config, "--out", str(out), "--steps", "2"]) == 2
    assert "holds a finished warm-up" in capsys.readouterr().err
    (out / warmup.DONE).unlink()
    assert cli.main(["warmup", "--config", config, "--out", str(out), "--steps", "2"]) == 2
    assert "interrupted warm-up" in capsys.readouterr().err


@pytest.mark.slow
def test_the_warmup_is_the_same_in_every_process_with_or_without_the_compilation_cache(tmp_path):
    """Stages 0-2 of the main job are deterministic: the same warm-up in two fresh processes on the main job's one
    XLA thread, one without the persistent compilation cache and one with it (as launch/quickstart.sh runs), writes
    the same parameters bit for bit. (2026-12-07: the whole 400-step warm-up reproduced a main job's to the last bit
    this way, also with XLA's default threads and under a concurrent CPU load.)"""
    import subprocess
    import sys

    from conftest import subprocess_env
    from a1jax.train import checkpoint
    config = os.path.join(REPO, "experiments", "recipe_tiny_sft.py")
    env = {**subprocess_env(), "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}
    runs = {"no_cache": {k: v for k, v in env.items() if k != "JAX_COMPILATION_CACHE_DIR"}, "cache": env}
    params = {}
    for name, e in runs.items():
        out = tmp_path / name
        subprocess.run([sys.executable, "-m", "a1jax.cli", "warmup", "--config", config, "--out", str(out), "--steps",
                        "4", "--batch", "4", "--fixed_steps", "4"], check=True, env=e, capture_output=True, cwd=REPO)
        params[name] = checkpoint.load_init_params(str(out))[1]
    leaves = [jax.tree.leaves(params[name]) for name in runs]
    assert len(leaves[0]) == len(leaves[1]) > 0
    for a, b in zip(*leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    losses = [json.loads((tmp_path / name / warmup.DONE).read_text())["loss"] for name in runs]
    assert losses[0] == losses[1]
