"""The HF transformers side of benchmarks/peers.py (torch eager, CPU, float32): the same rows on the same weights.

Runs in the oracle venv (.venv-oracle: Python 3.11, torch CPU, transformers; `bash tests/oracle/setup_oracle.sh`),
never in the a1jax venv, and imports nothing from a1jax. benchmarks/peers.py starts it after writing WORKDIR:
    hf/          the HF checkpoint directory (config.json, model.safetensors) converted from a1jax's parameters
    inputs.npz   the token batches, one array per row
    spec.json    shapes, optimizer settings, thread count, the tensors without weight decay, --steps, --repeats
and reads back WORKDIR/hf.json (the same keys as the a1jax side's result). T0 is the parent's time.time() when it
launched this process, so start-up includes the interpreter, the imports and from_pretrained.

    .venv-oracle/bin/python benchmarks/peers_hf.py --workdir WORKDIR --t0 T0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

from peers_timing import gate as _gate, row as _row, timed as _timed  # this script's folder is on sys.path


def _optimizer(model: torch.nn.Module, spec: dict) -> torch.optim.AdamW:
    """AdamW with a1jax's settings; weight decay on every tensor except those a1jax exempts (spec["no_decay"])."""
    named = dict(model.named_parameters())
    unknown = sorted(set(spec["no_decay"]) - set(named))
    if unknown:
        raise ValueError(f"spec.json no_decay names tensors the HF model lacks: {unknown[:5]}")
    o = spec["optimizer"]
    groups = [dict(params=[p for n, p in named.items() if n not in spec["no_decay"]], weight_decay=o["weight_decay"]),
              dict(params=[p for n, p in named.items() if n in spec["no_decay"]], weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=o["learning_rate"], betas=(o["b1"], o["b2"]), eps=o["eps"])


def run(workdir: str, t0: float) -> dict:
    with open(os.path.join(workdir, "spec.json")) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(spec["threads"])
    inputs = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(workdir, "inputs.npz")).items()}
    model = AutoModelForCausalLM.from_pretrained(spec["hf_dir"], dtype=torch.float32, attn_implementation="eager",
                                                 experts_implementation="eager")
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = _optimizer(model, spec)
    params = list(model.parameters())
    clip = spec["optimizer"]["clip_norm"]
    n_steps, repeats = spec["steps"], spec["repeats"]
    out: dict = {"rows": {}}

    def train(ids: torch.Tensor) -> tuple[float, float]:
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        return float(loss), float(norm)

    model.train()
    out["first_loss"], out["grad_norm"] = train(inputs["train_long"])
    out["startup_s"] = time.time() - t0
    losses, times = [], []
    for _ in range(n_steps):
        _gate()
        t = time.perf_counter()
        losses.append(train(inputs["train_long"])[0])
        times.append(time.perf_counter() - t)
    out["second_loss"] = losses[0]
    out["rows"]["train_long"] = _row(times, inputs["train_long"].numel())
    times, _ = _timed(lambda: train(inputs["train_batch"]), n_steps)
    out["rows"]["train_batch"] = _row(times, inputs["train_batch"].numel())

    model.load_state_dict(initial)  # the inference rows run on the initial weights, like the a1jax side's
    model.eval()
    with torch.inference_mode():
        for key, use_cache in (("forward", False), ("prefill", True)):
            ids = inputs[key]
            times, _ = _timed(lambda: model(input_ids=ids, use_cache=use_cache, logits_to_keep=1).logits, repeats)
            out["rows"][key] = _row(times, ids.numel())
        rows, prompt_len, new = spec["shapes"]["decode"]
        prompt = inputs["decode"]
        times, gen = _timed(lambda: model.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=new,
            min_new_tokens=new, use_cache=True, pad_token_id=0), repeats)
    if gen.shape != (rows, prompt_len + new):
        raise RuntimeError(f"HF generate returned shape {tuple(gen.shape)}, expected {(rows, prompt_len + new)}")
    out["rows"]["decode"] = _row(times, rows * new)
    out["greedy_tokens"] = gen[:, prompt_len:].tolist()
    out["versions"] = dict(python=platform.python_version(), torch=torch.__version__,
                           transformers=transformers.__version__, numpy=np.__version__)
    out["threads"] = dict(intra_op=torch.get_num_threads(), inter_op=torch.get_num_interop_threads())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="the directory benchmarks/peers.py prepared")
    ap.add_argument("--t0", type=float, required=True, help="the parent's time.time() at this process's launch")
    args = ap.parse_args()
    res = run(args.workdir, args.t0)
    with open(os.path.join(args.workdir, "hf.json"), "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main()
