"""`a1jax convert`: HF model directory <-> a1jax orbax checkpoint.

    a1jax convert --from-hf HF_DIR --out CKPT_DIR           # config.json + *.safetensors -> CKPT_DIR/params
    a1jax convert --to-hf --from CKPT_DIR --out HF_DIR      # -> config.json + model*.safetensors
"""
from __future__ import annotations

import argparse
import time

from a1jax.convert import checkpoint


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert between a HF checkpoint directory and an a1jax orbax checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-hf", metavar="HF_DIR", help="HF directory with config.json and *.safetensors")
    direction.add_argument("--to-hf", action="store_true", help="write a HF directory from the a1jax checkpoint "
                                                                "given by --from")
    p.add_argument("--from", dest="src", metavar="CKPT_DIR", help="a1jax checkpoint directory (with --to-hf)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--max-shard-gb", type=float, default=checkpoint.DEFAULT_MAX_SHARD_BYTES / 1e9,
                   help="largest safetensors shard written by --to-hf, in GB (default %(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    start = time.time()
    if args.from_hf:
        if args.src:
            raise ValueError("--from goes with --to-hf; --from-hf takes the HF directory itself")
        cfg, params = checkpoint.read_hf_dir(args.from_hf)
        checkpoint.save_params(args.out, cfg, params)
        print(f"converted {args.from_hf} -> {args.out} ({cfg.num_hidden_layers} layers, "
              f"{'MoE' if cfg.is_moe else 'dense'}, {cfg.param_dtype}) in {time.time() - start:.1f}s")
        return 0
    if not args.src:
        raise ValueError("--to-hf needs --from CKPT_DIR (an a1jax checkpoint directory)")
    cfg, params = checkpoint.load_params(args.src)
    files = checkpoint.write_hf_dir(args.out, cfg, params, max_shard_bytes=int(args.max_shard_gb * 1e9))
    print(f"converted {args.src} -> {args.out} ({len(files)} safetensors file(s)) in {time.time() - start:.1f}s")
    return 0
