"""The HF reference for parity tests: tiny random Qwen3.5 models run by transformers on CPU in float32.

Runs in the oracle venv (Python 3.11, torch, transformers; see setup_oracle.sh), never in the a1jax venv, and needs
no network. For each case it builds a model as in docs/spec/model.md §6, perturbs every weight the default
init leaves at a constant (RMSNorm offsets at 0, the gated-norm weight at 1, dt_bias at 1; A_log too), and runs a
batch of two rows of T=150 tokens (> 2 DeltaNet chunks of 64): one full row and one left-padded row. It saves an .npz:

    sd/<name>          every state-dict tensor, float32
    config_json        the HF config (cfg.to_dict(), JSON), class_name the HF model class
    input_ids [B,T], attention_mask [B,T], labels [B,T] (-100 on pads and on the first real token after them)
    logits [B,T,V]     HF forward with output_router_logits=True and labels
    loss               HF total loss: CE(shifted) + router_aux_loss_coef * aux_loss (MoE)
    aux_loss           HF's load-balancing loss (MoE cases only)
    unpadded_logits [1,T-pad,V]   the left-padded row run alone without padding

    .venv-oracle/bin/python tests/oracle/hf_oracle.py --case moe_spec --out /tmp/moe_spec.npz
    .venv-oracle/bin/python tests/oracle/hf_oracle.py --all --outdir /tmp/oracle

`--load DIR` (repeatable) checks a directory written by `a1jax convert --to-hf`: it loads it with
`AutoModelForCausalLM.from_pretrained`, runs DIR/inputs.npz (input_ids, attention_mask) and writes DIR/hf_outputs.npz
(logits, class_name, missing_keys, unexpected_keys).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from transformers import Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig, Qwen3_5TextConfig

T, PAD = 150, 37  # row 1 keeps 113 real tokens: still more than one chunk of 64

_SPEC = dict(vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
             linear_value_head_dim=24, linear_conv_kernel_dim=4, rms_norm_eps=1e-6, max_position_embeddings=256,
             tie_word_embeddings=False,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})

CASES = {
    # exactly docs/spec/model.md §6
    "moe_spec": (Qwen3_5MoeTextConfig, Qwen3_5MoeForCausalLM,
                 dict(_SPEC, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48)),
    # other sizes: dk > dv, 4 q-heads per kv-head, rotary 16 of 64, 16 experts top-4, two blocks of 4 layers, theta 1e7
    "moe_wide": (Qwen3_5MoeTextConfig, Qwen3_5MoeForCausalLM,
                 dict(_SPEC, vocab_size=384, hidden_size=96, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=2, head_dim=64, linear_num_key_heads=2, linear_num_value_heads=4,
                      linear_key_head_dim=32, linear_value_head_dim=16, num_experts=16, num_experts_per_tok=4,
                      moe_intermediate_size=24, shared_expert_intermediate_size=40,
                      rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25})),
    # dense SwiGLU (Qwen3.5-0.8B..27B family)
    "dense": (Qwen3_5TextConfig, Qwen3_5ForCausalLM, dict(_SPEC, intermediate_size=96)),
    # tied embeddings and a [lin, full] block (full_attention_interval 2)
    "dense_tied": (Qwen3_5TextConfig, Qwen3_5ForCausalLM,
                   dict(_SPEC, intermediate_size=80, tie_word_embeddings=True, full_attention_interval=2)),
}


def _perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Adds 0.3*N(0,1) to the weights the default init sets to a constant, which would hide 1+w vs w bugs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "dt_bias", "A_log")):
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def run_case(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    config_cls, model_cls, kw = CASES[name]
    torch.manual_seed(seed)
    cfg = config_cls(**kw)
    extra = {"experts_implementation": "eager"} if model_cls is Qwen3_5MoeForCausalLM else {}
    model = model_cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32, **extra).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    _perturb(model, gen)
    ids = torch.randint(0, cfg.vocab_size, (2, T), generator=gen)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :PAD] = 0
    ids[1, :PAD] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[1, PAD] = -100  # predicted from a pad position, whose logits are arbitrary (and differ between ports)
    is_moe = model_cls is Qwen3_5MoeForCausalLM
    with torch.no_grad():
        kwargs = {"output_router_logits": True} if is_moe else {}
        out = model(input_ids=ids, attention_mask=mask, labels=labels, **kwargs)
        alone = model(input_ids=ids[1:, PAD:])
    res = {f"sd/{k}": v.detach().float().numpy() for k, v in model.state_dict().items()}
    res.update(config_json=np.array(json.dumps(cfg.to_dict())), class_name=np.array(model_cls.__name__),
               input_ids=ids.numpy(), attention_mask=mask.numpy(), labels=labels.numpy(),
               logits=out.logits.float().numpy(), loss=np.float32(out.loss.item()),
               unpadded_logits=alone.logits.float().numpy())
    if is_moe:
        res["aux_loss"] = np.float32(out.aux_loss.item())
    return res


def load_dir(path: str) -> None:
    """Loads a converted directory the way a user would; reports what transformers made of it."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(path)
    extra = {"experts_implementation": "eager"} if getattr(config, "num_experts", 0) else {}
    model, info = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32,
                                                       output_loading_info=True, **extra)
    inputs = np.load(os.path.join(path, "inputs.npz"))
    with torch.no_grad():
        out = model.eval()(input_ids=torch.from_numpy(inputs["input_ids"]),
                           attention_mask=torch.from_numpy(inputs["attention_mask"]))
    np.savez(os.path.join(path, "hf_outputs.npz"), logits=out.logits.float().numpy(),
             class_name=np.array(type(model).__name__),
             missing_keys=np.array(sorted(info["missing_keys"]), dtype=str),
             unexpected_keys=np.array(sorted(info["unexpected_keys"]), dtype=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=sorted(CASES))
    ap.add_argument("--out", help="output .npz (with --case)")
    ap.add_argument("--all", action="store_true", help="run every case into --outdir/<case>.npz")
    ap.add_argument("--outdir")
    ap.add_argument("--load", action="append", metavar="DIR", help="check a converted HF directory (repeatable)")
    args = ap.parse_args()
    if args.load:
        for path in args.load:
            load_dir(path)
        return
    if args.all == bool(args.case) or (args.case and not args.out) or (args.all and not args.outdir):
        ap.error("use --case NAME --out PATH, --all --outdir DIR, or --load DIR")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    jobs = [(c, os.path.join(args.outdir, f"{c}.npz")) for c in CASES] if args.all else [(args.case, args.out)]
    for case, path in jobs:
        start = time.time()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp.npz"  # rename last, so a reader never sees half a file
        np.savez(tmp, **run_case(case))
        os.replace(tmp, path)
        print(f"hf_oracle: {case} -> {path} ({time.time() - start:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
