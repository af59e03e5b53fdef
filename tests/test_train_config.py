"""Experiment configs are checked field by field before anything is built: a bad field is one ValueError naming it
and what was expected (the CLI prints it as one line and exits 2), an unknown field is an error, and every shipped
experiment file, with each of its args, validates."""
import copy
import os

import ml_collections
import pytest

from a1jax import stages
from a1jax.cli import main as cli_main
from a1jax.envs import registry
from a1jax.data import tokenizers
from a1jax.train import config_schema, experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.py")


def shipped_specs(root):
    """Every shipped experiment file with each of its documented args (root: a recipe root holding the demos)."""
    e = lambda name: os.path.join(REPO, "experiments", name)
    specs = [e("quickstart.py"), e("quickstart.py") + ":smoke", e("quickstart_8cpu.py"),
             e("quickstart_8cpu.py") + ":smoke",
             e("agents_a1_sft.py"), e("agents_a1_sft.py") + ":v5p-512", e("agents_a1_sft.py") + ":h100-64",
             e("agents_a1_distill.py"), e("agents_a1_distill.py") + f":tiny,root={root}",
             e("recipe_tiny_sft.py") + f":root={root}", e("horizon_scaling.py") + f":root={root},h=16",
             e("horizon_scaling.py") + f":root={root},h=1,quick",
             e("horizon_scaling.py") + f":root={root},h=4,fixed,domains=search"]
    for d in registry.names():
        for arg in ("", "tiny,", "rl,", "tiny,rl,"):
            specs.append(e("agents_a1_teacher.py") + f":{arg}root={root},domain={d}")
    return specs


@pytest.fixture(scope="module")
def recipe_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    (root / "demos").mkdir()
    for d in registry.names():
        (root / "demos" / f"{d}.jsonl").write_text("")
        for h in (1, 2, 4, 8, 16):  # experiments/horizon_scaling.py: h=16 trains on every power of two up to 16
            (root / "demos" / f"{d}_h{h}.jsonl").write_text("")
    return str(root)


def test_every_shipped_experiment_and_arg_validates(recipe_root):
    specs = shipped_specs(recipe_root)
    assert len(specs) >= 30
    for spec in specs:
        exp = stages.validate(experiment.load(spec))
        assert exp.model.vocab_size >= tokenizers.vocab_size(exp.data.tokenizer), spec


# ---- generated: every field of the shipped configs, given a value of the wrong type -------------------------------

# dict-valued fields (keyed by rule, domain): validated whole, so a wrong value in them is named by the field
DICT_FIELDS = ("sharding_rules", "options", "domain_horizons", "domain_tasks", "domain_rows")


def _leaves(node, path=()):
    for key in node.keys():
        value = node[key]
        if isinstance(value, (dict, ml_collections.ConfigDict)) and key not in DICT_FIELDS:
            yield from _leaves(value, path + (key,))
        else:
            yield path + (key,), value


def _with(config, path, value=..., delete=False):
    """A copy of `config` (as an experiment file could have written it) with one field set, added or deleted."""
    d = copy.deepcopy(config.to_dict())
    node = d
    for p in path[:-1]:
        node = node[p]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return ml_collections.ConfigDict(d)


def _wrong_type(value):
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)) or value is None:
        return "many"
    if isinstance(value, str):
        return 5
    return 3.5  # lists, dicts


def _configs(recipe_root):
    return [experiment.load(QUICKSTART),
            experiment.load(os.path.join(REPO, "experiments", "agents_a1_teacher.py") + ":tiny,domain=search"),
            experiment.load(os.path.join(REPO, "experiments", "agents_a1_distill.py") + f":tiny,root={recipe_root}")]


def test_a_wrongly_typed_value_in_any_field_is_refused_naming_it(recipe_root):
    n = 0
    for config in _configs(recipe_root):
        for path, value in _leaves(config):
            name = "config." + ".".join(map(str, path))
            with pytest.raises(ValueError) as e:
                stages.validate(_with(config, path, _wrong_type(value)))
            assert str(e.value).startswith(name), (name, str(e.value))
            n += 1
    assert n > 100


def test_an_unknown_field_in_any_section_is_refused_with_the_known_ones(recipe_root):
    for config in _configs(recipe_root):
        sections = [(), *sorted({p[:-1] for p, _ in _leaves(config) if len(p) > 1})]
        for section in sections:
            where = ".".join(("config",) + section)
            with pytest.raises(ValueError, match=rf"^{where}\.lr: unknown field; the known fields of {where} are"):
                stages.validate(_with(config, section + ("lr",), 1e-3))


def test_a_missing_required_field_is_named():
    config = experiment.load(QUICKSTART)
    for path in [("optimizer", "b2"), ("train", "z_loss_coef"), ("eval", "batches"), ("checkpoint", "keep"),
                 ("data", "seq_len"), ("model", "preset"), ("optimizer",), ("mesh",)]:
        with pytest.raises(ValueError, match=rf"^config\.{'.'.join(path)} is missing"):
            stages.validate(_with(config, path, delete=True))


# ---- the configs of the issue, by hand ---------------------------------------------------------------------------

BAD = [
    ("model.overrides.vocab_size", 151669, "config.model.overrides.vocab_size=151669: expected >= the 248077 token "
                                           "ids of config.data.tokenizer='qwen3_5'"),
    ("eval.batches", 0, "config.eval.batches=0: expected an integer >= 1"),
    ("optimizer.learning_rate", float("inf"), "config.optimizer.learning_rate=inf: expected a finite number > 0"),
    ("optimizer.learning_rate", float("nan"), "config.optimizer.learning_rate=nan: expected a finite number > 0"),
    ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate=0.0: expected a finite number > 0"),
    ("optimizer.clip_norm", -1.0, "config.optimizer.clip_norm=-1.0: expected a finite number >= 0"),
    ("optimizer.weight_decay", -0.1, "config.optimizer.weight_decay=-0.1: expected a finite number >= 0"),
    ("optimizer.b1", 1.0, "config.optimizer.b1=1.0: expected a finite number in [0, 1)"),
    ("optimizer.b2", 1.5, "config.optimizer.b2=1.5: expected a finite number in [0, 1)"),
    ("optimizer.eps", 0.0, "config.optimizer.eps=0.0: expected a finite number > 0"),
    ("optimizer.min_lr_ratio", 2.0, "config.optimizer.min_lr_ratio=2.0: expected a finite number in [0, 1]"),
    ("optimizer.warmup_steps", -1, "config.optimizer.warmup_steps=-1: expected an integer >= 0"),
    ("optimizer.schedule", "sawtooth", "config.optimizer.schedule='sawtooth': expected one of ('cosine'"),
    ("train.z_loss_coef", -1e-4, "config.train.z_loss_coef=-0.0001: expected a finite number >= 0"),
    ("train.mtp_loss_coef", 0.3, "config.train.mtp_loss_coef=0.3: expected 0 when the model has no MTP layers"),
    ("model.overrides.mtp_loss_coef", 0.3, "config.model.overrides.mtp_loss_coef=0.3: expected 0 when the model "
                                           "has no MTP layers"),
    ("train.steps", 0, "config.train.steps=0: expected an integer >= 1"),
    ("train.steps", 10.0, "config.train.steps=10.0: expected an integer >= 1"),
    ("train.steps", True, "config.train.steps=True: expected an integer >= 1"),
    ("train.microbatches", 3, "config.train.microbatches=3: expected a positive divisor of data.batch_size=1"),
    ("train.max_consecutive_skips", 0, "config.train.max_consecutive_skips=0: expected an integer >= 1"),
    ("train.log_every", "10", "config.train.log_every='10': expected an integer >= 1"),
    ("eval.every", -5, "config.eval.every=-5: expected an integer >= 0"),
    ("checkpoint.keep", 0, "config.checkpoint.keep=0: expected an integer >= 1"),
    ("checkpoint.async_save", "no", "config.checkpoint.async_save='no': expected true or false"),
    ("data.seq_len", 1, "config.data.seq_len=1: expected an integer in [2, 262144]"),
    ("data.batch_size", 0, "config.data.batch_size=0: expected an integer >= 1"),
    ("data.num_epochs", 0, "config.data.num_epochs=0: expected None or an integer >= 1"),
    ("data.packing", "greedy", "config.data.packing='greedy': expected one of ("),
    ("data.tokenizer", "gpt2", "config.data.tokenizer='gpt2': tokenizer 'gpt2' is neither one of"),
    ("data.domains", "customer_service", "config.data.domains='customer_service': expected a list of domain names"),
    ("data.sources", [{"paths": ["data/quickstart/toolbench.jsonl"], "weight": -1.0}],
     "config.data.sources[0].weight=-1.0: expected a finite number > 0"),
    ("data.sources", [{"paths": ["data/quickstart/toolbench.jsonl"], "wieght": 1.0}],
     "config.data.sources[0].wieght: unknown field; the known fields of config.data.sources[0] are"),
    ("data.sources", [{"paths": "data/quickstart/toolbench.jsonl"}],
     "config.data.sources[0].paths='data/quickstart/toolbench.jsonl': expected a list of paths"),
    ("mesh.data", 0, "config.mesh.data=0: expected a positive integer or -1"),
    ("mesh.fsdp", -1, "config.mesh={'data': -1, 'fsdp': -1, 'expert': 1, 'tensor': 1, 'sequence': 1}: expected at "
                      "most one axis of size -1"),
    ("mesh.pipeline", 2, "config.mesh.pipeline: unknown field; the known fields of config.mesh are"),
    ("mesh.expert", 3, "config.mesh: mesh axis 'expert'=3 must divide num_experts=8"),
    ("mesh.sequence", 3, "config.data.seq_len=4096 must be divisible by mesh axis 'sequence'=3"),
    ("model.overrides.hidden_size", "64", "config.model.overrides.hidden_size='64': expected an integer"),
    ("model.overrides.rope_theta", float("inf"), "config.model.overrides.rope_theta=inf: expected a finite number"),
    ("model.overrides.hiden_size", 64, "config.model.overrides.hiden_size: unknown field"),
    ("model.preset", "huge", "config.model.preset='huge': expected one of"),
    ("stage", "pretrain", "config.stage='pretrain': expected one of the known stages ['grpo', 'opd', 'sft', 'teacher_sft']"),
    ("seed", -1, "config.seed=-1: expected an integer in [0, 4294967295]"),
    ("ep_transport", "pigeon", "config.ep_transport='pigeon': expected one of ('auto', 'ragged', 'all_to_all')"),
]


@pytest.mark.parametrize("field, value, message", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_a_bad_value_is_one_error_naming_the_field(field, value, message):
    config = experiment.load(QUICKSTART)
    with pytest.raises(ValueError) as e:
        stages.validate(_with(config, tuple(field.split(".")), value))
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_a_batch_the_mesh_cannot_split_is_refused_before_any_device_is_asked():
    config = _with(experiment.load(QUICKSTART), ("mesh",), dict(data=1, fsdp=4, expert=1, tensor=1, sequence=1))
    config = _with(config, ("data", "batch_size"), 6)
    with pytest.raises(ValueError, match=r"^config.data.batch_size=6: expected a multiple of train.microbatches=1 "
                                         r"x the 4 batch shards of the mesh \(data=1 x fsdp=4 x expert=1\)"):
        stages.validate(config)


def test_rollout_stage_sections_are_checked_too(recipe_root):
    distill = experiment.load(os.path.join(REPO, "experiments", "agents_a1_distill.py") + f":tiny,root={recipe_root}")
    for path, value, message in [
            (("rollout", "temperature"), "hot", "config.rollout.temperature='hot': expected a finite number"),
            (("rollout", "max_turns"), 0, "config.rollout.max_turns=0: expected a positive integer"),
            (("distill", "beta"), 2.0, "config.distill.beta=2.0: expected a number in [0, 1]"),
            (("distill", "estimatr"), "salient", "config.distill.estimatr: unknown field"),
            (("envs", "horizons"), "1,2", "config.envs.horizons='1,2': expected a list"),
            (("teachers",), [{"domain": "search", "workdir": "w", "kk": 3}],
             "config.teachers[0].kk: unknown field; the known fields of config.teachers[0] are"),
            (("expert_iteration",), {"rollout_fraction": float("nan")},
             "config.expert_iteration.rollout_fraction=nan: expected a finite number")]:
        with pytest.raises(ValueError) as e:
            stages.validate(_with(distill, path, value))
        assert str(e.value).startswith(message), str(e.value)


def test_the_train_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    assert cli_main(["train", "--config", QUICKSTART, "--workdir", str(tmp_path / "w"),
                     "--config.optimizer.b1=1.0"]) == 2
    err = capsys.readouterr().err
    assert err == "a1jax train: error: config.optimizer.b1=1.0: expected a finite number in [0, 1)\n"
    assert not (tmp_path / "w").exists()


def test_experiment_file_fields_are_all_in_the_schema():
    schema = config_schema._sections({})[0]
    assert {"optimizer", "train", "eval", "checkpoint", "data", "model", "mesh"} <= set(schema)
    assert set(schema["optimizer"]) == {"learning_rate", "warmup_steps", "schedule", "min_lr_ratio", "weight_decay",
                                        "b1", "b2", "eps", "clip_norm"}
