"""The HF <-> a1jax converter: exact round trips, every accepted spelling of a checkpoint, and errors that name each
bad tensor. HF state dicts come from the oracle (real transformers models) and from random params + `to_hf`."""
from __future__ import annotations

import json
import os

import jax
import ml_dtypes
import numpy as np
import pytest

from a1jax import cli
from a1jax.convert import from_hf, load_params, read_hf_dir, safetensors, save_params, to_hf, write_hf_dir
from a1jax.convert.hf_config import config_from_hf, config_to_hf
from a1jax.convert.layout import hf_layout, per_expert_layout
from a1jax.model import params as P
from a1jax.model import presets
from a1jax.model.params import ParamSpec, param_specs
from oracle import CASES
from oracle.fixtures import oracle  # noqa: F401

# ModelConfig fields that HF's config.json carries; the rest are a1jax implementation choices.
HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "layer_types", "num_attention_heads",
             "num_key_value_heads", "head_dim", "partial_rotary_factor", "rope_theta", "max_position_embeddings",
             "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
             "linear_conv_kernel_dim", "num_experts", "num_experts_per_tok", "shared_expert_intermediate_size",
             "intermediate_size", "router_aux_loss_coef", "rms_norm_eps", "tie_word_embeddings",
             "initializer_range", "mtp_num_hidden_layers", "bos_token_id", "eos_token_ids", "param_dtype")


def assert_state_dicts_identical(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype, x.shape, y.shape)
        assert x.tobytes() == y.tobytes(), k


def assert_params_identical(p, q):
    a, b = jax.tree.leaves_with_path(P.unbox(p)), jax.tree.leaves_with_path(P.unbox(q))
    assert [k for k, _ in a] == [k for k, _ in b]
    for (k, x), (_, y) in zip(a, b):
        assert x.dtype == y.dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes(), jax.tree_util.keystr(k)


def synthetic(cfg, seed=0):
    """A HF state dict for cfg from random a1jax params with no constant leaf (numpy: `params.init` compiles one
    XLA program per leaf shape, seconds on CPU)."""
    rng = np.random.default_rng(seed)
    leaf = lambda s: P.Param(rng.standard_normal(s.shape).astype(s.dtype or cfg.param_dtype), s.axes)
    return to_hf(cfg, jax.tree.map(leaf, param_specs(cfg), is_leaf=lambda x: isinstance(x, ParamSpec)))


def bf16_moe_with_mtp():
    return presets.tiny(param_dtype="bfloat16", dtype="bfloat16", mtp_num_hidden_layers=1)


def split_experts(sd: dict, layers=None) -> dict:
    """Rewrites fused experts (`gate_up_proj` [E,2I,H], `down_proj` [E,H,I]) the per-expert way the hub stores MTP."""
    out = {}
    for k, v in sd.items():
        pre = k[:-len("gate_up_proj")]
        if k.endswith("experts.gate_up_proj") and (layers is None or any(f"layers.{i}." in k for i in layers)):
            I = v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{pre}{e}.gate_proj.weight"], out[f"{pre}{e}.up_proj.weight"] = v[e, :I], v[e, I:]
        elif k.endswith("experts.down_proj") and (layers is None or any(f"layers.{i}." in k for i in layers)):
            for e in range(v.shape[0]):
                out[f"{k[:-len('down_proj')]}{e}.down_proj.weight"] = v[e]
        else:
            out[k] = v
    return out


# ---- round trips ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_oracle_state_dict_round_trip_is_bit_exact(oracle, case):
    o = oracle(case)
    cfg, params = from_hf(o["state_dict"], o["config"])
    sd, hf_config = to_hf(cfg, params)
    expected = dict(o["state_dict"])
    if cfg.tie_word_embeddings:  # HF's state_dict lists the tied head; checkpoints (and to_hf) do not store it
        np.testing.assert_array_equal(expected.pop("lm_head.weight"), expected["model.embed_tokens.weight"])
    assert_state_dicts_identical(sd, expected)
    assert config_from_hf(hf_config, mtp_layers=0, param_dtype="float32") == cfg


def test_bf16_round_trip_with_mtp_is_bit_exact():
    cfg = bf16_moe_with_mtp()
    sd, hf_config = synthetic(cfg)
    assert sd["model.embed_tokens.weight"].dtype == ml_dtypes.bfloat16
    assert sd["model.layers.0.linear_attn.A_log"].dtype == np.float32  # kept float32, as on the hub
    assert "mtp.layers.0.mlp.experts.gate_up_proj" in sd and "mtp.fc.weight" in sd
    cfg2, params = from_hf(sd, hf_config)
    assert (cfg2.param_dtype, cfg2.mtp_num_hidden_layers) == ("bfloat16", 1)
    assert_state_dicts_identical(to_hf(cfg2, params)[0], sd)


@pytest.mark.parametrize("preset", ["tiny", "tiny_dense", "qwen35_35b_a3b", "qwen35_0_8b"])
def test_config_round_trip_keeps_every_hf_field(preset):
    cfg = presets.get(preset)
    back = config_from_hf(config_to_hf(cfg), mtp_layers=cfg.mtp_num_hidden_layers, param_dtype=cfg.param_dtype)
    for f in HF_FIELDS:
        assert getattr(back, f) == getattr(cfg, f), f


def test_missing_hf_fields_take_hf_defaults_not_a1jax_defaults():
    # save_pretrained drops fields equal to the class default: theta must become HF's 10000, not Qwen3.5's 1e7.
    cfg = config_from_hf({"model_type": "qwen3_5_moe_text", "num_hidden_layers": 8}, mtp_layers=0,
                         param_dtype="bfloat16")
    assert (cfg.rope_theta, cfg.max_position_embeddings, cfg.partial_rotary_factor) == (10000.0, 32768, 0.25)
    assert cfg.layer_types == ("linear_attention",) * 3 + ("full_attention",) + ("linear_attention",) * 3 + (
        "full_attention",)
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        config_from_hf({"model_type": "qwen3_5_moe_text", "rope_parameters": {"rope_type": "yarn"}}, mtp_layers=0,
                       param_dtype="float32")


@pytest.mark.parametrize("cfg", [presets.tiny(), presets.tiny_dense(tie_word_embeddings=True),
                                 presets.tiny(mtp_num_hidden_layers=2)], ids=["moe", "dense_tied", "mtp"])
def test_layout_covers_every_leaf_exactly_once(cfg):
    specs = jax.tree_util.tree_flatten_with_path(param_specs(cfg), is_leaf=lambda x: isinstance(x, ParamSpec))[0]
    spec_paths = {tuple(getattr(k, "key", getattr(k, "idx", None)) for k in path) for path, _ in specs}
    pieces = [p.path for t in hf_layout(cfg) for p in t.pieces]
    assert set(pieces) == spec_paths
    # a leaf is touched by one HF tensor per stacked layer, never twice for the same slot
    assert len(set((p.path, p.index) for t in hf_layout(cfg) for p in t.pieces)) == len(pieces)
    names = [t.name for t in hf_layout(cfg) + per_expert_layout(cfg)]
    assert len(names) == len(set(names))


# ---- accepted spellings ----------------------------------------------------------------------------------------------

def test_per_expert_and_fused_experts_give_identical_params():
    cfg = bf16_moe_with_mtp()
    sd, hf_config = synthetic(cfg)
    fused = from_hf(sd, hf_config)[1]
    assert_params_identical(from_hf(split_experts(sd), hf_config)[1], fused)
    # the hub mixes both: fused main layers, per-expert MTP layer
    hub_like = {k: v for k, v in split_experts(sd).items() if k.startswith("mtp.")}
    hub_like.update({k: v for k, v in sd.items() if not k.startswith("mtp.")})
    assert_params_identical(from_hf(hub_like, hf_config)[1], fused)


def test_vlm_prefix_accepted_and_visual_tensors_ignored(oracle):
    o = oracle("moe_wide")  # a MoE without MTP, stored the way the hub VLM checkpoint names it
    sd = {k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k: v
          for k, v in o["state_dict"].items()}
    sd["model.visual.blocks.0.attn.qkv.weight"] = np.zeros((3, 5), np.float32)
    sd["model.visual.merger.linear_fc2.weight"] = np.zeros((7,), np.int64)
    vlm_config = {"model_type": "qwen3_5_moe", "architectures": ["Qwen3_5MoeForConditionalGeneration"],
                  "text_config": {k: v for k, v in o["config"].items() if k != "model_type"},
                  "vision_config": {"depth": 27}, "tie_word_embeddings": False}
    cfg, params = from_hf(sd, vlm_config)
    cfg_ref, params_ref = from_hf(o["state_dict"], o["config"])
    assert cfg == cfg_ref and cfg.mtp_num_hidden_layers == 0
    assert_params_identical(params, params_ref)


# ---- errors ----------------------------------------------------------------------------------------------------------

def test_corrupted_state_dict_error_names_every_bad_tensor():
    cfg = presets.tiny()
    sd, hf_config = synthetic(cfg)
    del sd["model.layers.3.self_attn.k_norm.weight"]
    del sd["lm_head.weight"]
    sd["model.layers.0.linear_attn.in_proj_qkv.weight"] = np.zeros((161, 64), np.float32)
    sd["model.layers.1.mlp.experts.down_proj"] = np.zeros((8, 32, 64), np.float32)  # transposed by mistake
    sd["model.layers.0.mlp.router.weight"] = np.zeros((8, 64), np.float32)
    sd["model.layers.2.linear_attn.A_log"] = np.zeros((4,), np.int64)
    with pytest.raises(ValueError) as e:
        from_hf(sd, hf_config)
    msg = str(e.value)
    assert "6 problem(s)" in msg
    for needle in ["missing tensor 'model.layers.3.self_attn.k_norm.weight' with shape [32]",
                   "missing tensor 'lm_head.weight' with shape [512, 64]",
                   "'model.layers.0.linear_attn.in_proj_qkv.weight' has shape [161, 64], expected [160, 64]",
                   "'model.layers.1.mlp.experts.down_proj' has shape [8, 32, 64], expected [8, 64, 32]",
                   "unexpected tensor 'model.layers.0.mlp.router.weight' with shape [8, 64]",
                   "'model.layers.2.linear_attn.A_log' has dtype int64"]:
        assert needle in msg, (needle, msg)


def test_incomplete_per_expert_layer_names_the_missing_experts():
    cfg = presets.tiny()
    sd, hf_config = synthetic(cfg)
    sd = split_experts(sd, layers=[2])
    del sd["model.layers.2.mlp.experts.5.up_proj.weight"]
    sd["model.layers.2.mlp.experts.down_proj"] = np.zeros((8, 64, 32), np.float32)
    with pytest.raises(ValueError) as e:
        from_hf(sd, hf_config)
    msg = str(e.value)
    assert "missing tensor 'model.layers.2.mlp.experts.5.up_proj.weight'" in msg
    assert "'model.layers.2.mlp.experts.0.down_proj.weight' duplicates the fused" in msg
    assert "gate_up_proj'" not in msg.split("missing")[0]


def test_unknown_model_type_is_rejected_by_name():
    with pytest.raises(ValueError, match="qwen3_next"):
        from_hf({}, {"model_type": "qwen3_next"})


# ---- safetensors and directories -------------------------------------------------------------------------------------

def test_safetensors_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "bf16": rng.standard_normal((4, 2, 3)).astype(ml_dtypes.bfloat16),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "u8": np.arange(5, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "scalar": np.float32(2.5).reshape(()),
        "empty": np.zeros((0, 4), np.float32),
        "transposed": rng.standard_normal((3, 4)).astype(np.float32).T,  # non-contiguous input
    }
    path = tmp_path / "t.safetensors"
    safetensors.save_file(path, tensors, metadata={"format": "pt"})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert n % 8 == 0 and header["__metadata__"] == {"format": "pt"}
    assert header["bf16"] == {"dtype": "BF16", "shape": [4, 2, 3], "data_offsets": header["bf16"]["data_offsets"]}
    loaded = safetensors.load_file(path)
    assert list(loaded) == list(tensors)  # file order is write order
    assert_state_dicts_identical(loaded, tensors)
    assert safetensors.tensor_infos(path)["i64"] == (np.dtype("<i8"), (2, 3))


def test_safetensors_reader_rejects_garbage(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes((10 ** 12).to_bytes(8, "little") + b"{}")
    with pytest.raises(ValueError, match="bad.safetensors"):
        safetensors.read_header(path)


def test_cli_converts_hf_dir_to_orbax_and_back_bit_exact(tmp_path):
    cfg = bf16_moe_with_mtp()
    sd, hf_config = synthetic(cfg)
    hf_dir, ckpt, back = tmp_path / "hf", tmp_path / "ckpt", tmp_path / "back"
    cfg_ref, params_ref = from_hf(sd, hf_config)
    names = write_hf_dir(str(hf_dir), cfg_ref, params_ref, max_shard_bytes=100_000)
    assert len(names) > 1 and (hf_dir / "model.safetensors.index.json").exists()
    assert cli.main(["convert", "--from-hf", str(hf_dir), "--out", str(ckpt)]) == 0
    cfg2, params2 = load_params(str(ckpt))
    assert cfg2 == cfg_ref
    assert_params_identical(params2, params_ref)
    assert cli.main(["convert", "--to-hf", "--from", str(ckpt), "--out", str(back), "--max-shard-gb", "1"]) == 0
    assert sorted(os.listdir(back)) == ["config.json", "model.safetensors"]
    assert_state_dicts_identical(safetensors.load_file(back / "model.safetensors"), sd)
    assert json.loads((back / "config.json").read_text())["architectures"] == ["Qwen3_5MoeForCausalLM"]
    assert cli.main(["convert", "--to-hf", "--from", str(ckpt), "--out", str(back)]) == 2  # never mixes checkpoints
    assert cli.main(["convert", "--from-hf", str(hf_dir), "--out", str(ckpt)]) == 2


def test_hub_style_directory_with_unfused_mtp_experts(tmp_path):
    """As the hub stores Qwen3.5: VLM prefix, several shards without an index, per-expert MTP experts."""
    cfg = bf16_moe_with_mtp()
    sd, hf_config = synthetic(cfg)
    hub = {"model.language_model." + k[6:] if k.startswith("model.") else k: v
           for k, v in sd.items() if not k.startswith("mtp.")}
    hub.update(split_experts({k: v for k, v in sd.items() if k.startswith("mtp.")}))
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    items = list(hub.items())
    safetensors.save_file(hf_dir / "model-a.safetensors", dict(items[::2]))
    safetensors.save_file(hf_dir / "model-b.safetensors", dict(items[1::2]))
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "qwen3_5_moe", "text_config": hf_config}))
    cfg2, params = read_hf_dir(str(hf_dir))
    assert cfg2.mtp_num_hidden_layers == 1
    assert_params_identical(params, from_hf(sd, hf_config)[1])


def test_load_params_restores_onto_given_shardings(tmp_path):
    cfg, params = from_hf(*synthetic(presets.tiny()))
    save_params(str(tmp_path / "ckpt"), cfg, params)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[-1])
    shardings = jax.tree.map(lambda _: device, P.unbox(params))
    _, restored = load_params(str(tmp_path / "ckpt"), shardings=shardings)
    leaf = restored["blocks"][0]["mlp"]["experts_gate_up"]
    assert isinstance(leaf.value, jax.Array) and leaf.value.sharding == device
    assert leaf.axes == params["blocks"][0]["mlp"]["experts_gate_up"].axes
    assert_params_identical(restored, params)


def test_cli_reports_missing_config_json_with_its_path(tmp_path, capsys):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    safetensors.save_file(hf_dir / "model.safetensors", {"x": np.zeros(2, np.float32)})
    assert cli.main(["convert", "--from-hf", str(hf_dir), "--out", str(tmp_path / "out")]) == 2
    assert f"{hf_dir}/config.json not found" in capsys.readouterr().err
    assert cli.main(["convert", "--from-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
