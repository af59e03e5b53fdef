"""Checkpoints move between meshes: train on fsdp=8 (8 devices), resume on data=2 x fsdp=2 (4 devices), and the run
goes on exactly as if uninterrupted; a checkpoint of another model is refused with the differing arrays named."""
import os
import shutil

import jax
import numpy as np
import pytest

from a1jax import stages
from a1jax.train import checkpoint, experiment, loop
from test_multihost import STEPS, losses, tiny_flags, write_trajectories

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.py")
FSDP8 = ["--config.mesh.data=1", "--config.mesh.fsdp=8", "--config.data.batch_size=8"]
DATA2_FSDP2 = ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.data.batch_size=8"]


def _experiment(flags):
    return stages.validate(experiment.apply_overrides(experiment.load(QUICKSTART), flags))


def _resume_copy(src, dst, step: int, *, with_config: bool = True):
    """A workdir holding only checkpoint `step` of `src` (and its config.json): a run interrupted there."""
    os.makedirs(os.path.join(dst, "checkpoints"))
    shutil.copytree(os.path.join(src, "checkpoints", str(step)), os.path.join(dst, "checkpoints", str(step)))
    if with_config:
        shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted fsdp=8 run (checkpoints at 4 and 8): (flags, workdir, final state)."""
    root = tmp_path_factory.mktemp("restore_mesh")
    flags = tiny_flags(write_trajectories(root / "chats.jsonl"), str(root / "cache"),
                       f"--config.checkpoint.every={STEPS // 2}")
    state = loop.train(_experiment(flags + FSDP8), str(root / "fsdp8"))
    return flags, root / "fsdp8", state


def test_resume_on_another_mesh_and_device_count_continues_the_same_run(straight, tmp_path):
    flags, src, final = straight
    assert final.params["embed"].value.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    _resume_copy(src, tmp_path / "moved", STEPS // 2)
    state = loop.train(_experiment(flags + DATA2_FSDP2), str(tmp_path / "moved"), devices=jax.devices()[:4])
    # the restored state lives on the new 4-device mesh ...
    embed = state.params["embed"].value
    assert len(embed.sharding.device_set) == 4 and dict(embed.sharding.mesh.shape)["data"] == 2
    # ... and training went on as if nothing happened
    moved, original = losses(tmp_path / "moved"), losses(src)
    assert sorted(moved) == list(range(STEPS // 2 + 1, STEPS + 1))
    np.testing.assert_allclose([moved[s] for s in sorted(moved)], [original[s] for s in sorted(moved)], rtol=0,
                               atol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(final.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)


def test_checkpoint_of_another_model_is_refused_and_kept(straight, tmp_path):
    flags, src, _ = straight
    # the workdir's config.json says which model fields differ
    _resume_copy(src, tmp_path / "with_config", STEPS // 2)
    with pytest.raises(ValueError, match="different model .*model.overrides.hidden_size: 32 -> 16"):
        loop.train(_experiment(flags + FSDP8 + ["--config.model.overrides.hidden_size=16"]),
                   str(tmp_path / "with_config"))
    # without config.json the checkpoint's own metadata names the arrays, and the checkpoint is not set aside
    _resume_copy(src, tmp_path / "bare", STEPS // 2, with_config=False)
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"different model .*: params/blocks/0/input_norm/value: "
                                                            r"checkpoint \(1, 32\) vs model \(1, 16\)"):
        loop.train(_experiment(flags + FSDP8 + ["--config.model.overrides.hidden_size=16"]), str(tmp_path / "bare"))
    assert (tmp_path / "bare" / "checkpoints" / str(STEPS // 2)).is_dir()
    assert not (tmp_path / "bare" / "checkpoints" / f"damaged-{STEPS // 2}").exists()
