"""a1jax forward vs HF transformers on the oracle's tiny random models (float32, T=150, one left-padded row).

Conventions for HF parity: segment_ids = attention_mask (0 on pads) and positions = arange(T) for every row, since
HF's position ids start at 0 at the pads. Logits are compared on real tokens only; HF's values at pads are arbitrary.
"""
from __future__ import annotations

import numpy as np
import pytest

import a1jax.model as model
from a1jax.convert import from_hf, write_hf_dir
from oracle import CASES, MOE_CASES, load_in_transformers
from oracle.fixtures import oracle, oracle_or_skip  # noqa: F401

LOGIT_ATOL = 1e-5
_RUNS: dict = {}


def run_a1jax(oracle, case):
    """(oracle outputs, cfg, a1jax logits [B,T,V], a1jax aux, logits of the padded row run alone unpadded)."""
    if case not in _RUNS:
        o = oracle(case)
        cfg, params = from_hf(o["state_dict"], o["config"])
        cfg = cfg.replace(dtype="float32", param_dtype="float32")
        tokens = o["input_ids"].astype(np.int32)
        mask = o["attention_mask"].astype(np.int32)
        positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
        out = model.forward(params, tokens, cfg, positions=positions, segment_ids=mask)
        pad = int((mask[1] == 0).sum())
        alone = model.forward(params, tokens[1:, pad:], cfg)
        _RUNS[case] = (o, cfg, np.asarray(out.logits), {k: np.asarray(v) for k, v in out.aux.items()},
                       np.asarray(alone.logits))
    return _RUNS[case]


def causal_lm_loss(logits, labels) -> float:
    """HF's ForCausalLMLoss: logits[:, :-1] predict labels[:, 1:], mean over labels != -100."""
    lg, lb = logits[:, :-1].astype(np.float64), labels[:, 1:]
    keep = lb != -100
    m = lg.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(lg - m).sum(-1, keepdims=True)))[..., 0]
    picked = np.take_along_axis(lg, np.where(keep, lb, 0)[..., None], -1)[..., 0]
    return float(((logz - picked) * keep).sum() / keep.sum())


@pytest.mark.parametrize("case", CASES)
def test_logits_match_hf_on_real_tokens(oracle, case):
    o, _, logits, _, _ = run_a1jax(oracle, case)
    real = o["attention_mask"].astype(bool)
    diff = np.abs(logits - o["logits"])[real].max()
    assert diff <= LOGIT_ATOL, f"{case}: max |a1jax - HF| logit difference {diff:.3g} > {LOGIT_ATOL}"


@pytest.mark.parametrize("case", MOE_CASES)
def test_aux_loss_matches_hf_load_balancing_loss(oracle, case):
    o, _, _, aux, _ = run_a1jax(oracle, case)
    np.testing.assert_allclose(aux["aux_loss"], o["aux_loss"], rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_total_loss_matches_hf(oracle, case):
    o, cfg, logits, aux, _ = run_a1jax(oracle, case)
    loss = causal_lm_loss(logits, o["labels"])
    if cfg.is_moe:
        loss += cfg.router_aux_loss_coef * float(aux["aux_loss"])
    np.testing.assert_allclose(loss, o["loss"], rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_left_padded_row_equals_unpadded_run(oracle, case):
    o, _, logits, _, alone = run_a1jax(oracle, case)
    pad = int((o["attention_mask"][1] == 0).sum())
    np.testing.assert_allclose(logits[1, pad:], alone[0], atol=LOGIT_ATOL, rtol=0)
    np.testing.assert_allclose(alone[0], o["unpadded_logits"][0], atol=LOGIT_ATOL, rtol=0)


def test_to_hf_directory_loads_in_transformers(oracle, tmp_path):
    """The other direction: a directory written by to_hf (sharded + index for the MoE, tied head for dense_tied)
    loads with AutoModelForCausalLM, with no missing or unexpected keys, and reproduces HF's logits exactly."""
    dirs, cases = [], ("moe_spec", "dense_tied")
    for case in cases:
        o = oracle(case)
        cfg, params = from_hf(o["state_dict"], o["config"])
        d = tmp_path / case
        write_hf_dir(str(d), cfg, params, max_shard_bytes=200_000 if cfg.is_moe else 10 ** 9)
        np.savez(d / "inputs.npz", input_ids=o["input_ids"], attention_mask=o["attention_mask"])
        dirs.append(str(d))
    assert (tmp_path / "moe_spec" / "model.safetensors.index.json").exists()
    with oracle_or_skip():
        results = load_in_transformers(dirs)
    for case, res in zip(cases, results):
        o = oracle(case)
        assert str(res["class_name"]) == str(o["class_name"])
        assert list(res["missing_keys"]) == [] and list(res["unexpected_keys"]) == []
        real = o["attention_mask"].astype(bool)
        np.testing.assert_array_equal(res["logits"][real], o["logits"][real])
