"""The synthetic copy warm-up (a1jax/train/warmup.py): rows, learning, the `a1jax warmup` command's files and refusals,
and that a training run starts from what it wrote."""
import json
import os

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


def test_the_copy_loss_falls():
    cfg = presets.tiny(**SMALL)
    _, first = warmup.copy_warmup(cfg, warmup.CopySettings(steps=1, batch=8, length=8), log=lambda _: None)
    _, later = warmup.copy_warmup(cfg, warmup.CopySettings(steps=60, batch=8, length=8, learning_rate=1e-2),
                                  log=lambda _: None)
    assert later["loss"] < first["loss"] - 0.3, (first, later)


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
