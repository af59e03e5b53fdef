"""Agents-A1 stage 1: full-domain SFT of Qwen3.5-35B-A3B on long agentic trajectories (45K tokens on average).

    a1jax convert --from-hf /path/to/Qwen3.5-35B-A3B --out ckpt/qwen35_35b_a3b
    a1jax train --config experiments/agents_a1_sft.py:v5p-512 --workdir /shared/fs/agents_a1_sft \
        --init_from ckpt/qwen35_35b_a3b --config.data.sources='[...your trajectory JSONL...]'

Hardware: TPU v5p-512, i.e. 256 chips (arg `v5p-512`, the default) or 64 x H100 80GB (arg `h100-64`).
Sequence 65,536, longer trajectories split at turn boundaries, 4M tokens per step. On v5p the sequence is split
over the `sequence` axis: full-attention layers run ring attention (zigzag order), DeltaNet layers context-parallel
state passing with a conv halo (a1jax/model/parallel.py); the routed experts are split over `expert` with an
all-to-all.
Expected time and loss: not measured yet (no run of this size has been made with a1jax); Agents-A1's own
hyper-parameters are not public (docs/spec/recipe.md §1.2), so these follow common practice for MoE SFT.
Planned for v5p-512 with the TPU compiler (`a1jax plan --config experiments/agents_a1_sft.py --topology v5p-512`,
libtpu 0.0.51, docs/sharding.md): per chip 9.94 GB of arguments (3.31 GB parameters, 6.62 GB Adam state), 48.53 GB of
temporaries, peak 58.47 GB of 95 GB HBM (38.5% headroom); the MoE, ring/flash attention and Gated DeltaNet Pallas
kernels compile with Mosaic (90 call sites); 8.49e14 FLOPs per chip per step (HLO dots x loop trips), 1.133 x the
analytic count (MTP included) x the remat factor 1.178, a roofline lower bound of 1.85 s per step.
Remat: "save_attention" on v5p (full remat, except the attention kernels' output and lse: 9.4% fewer FLOPs than
"full" for 1.41 GB more per chip; docs/sharding.md, "Remat policy"); "full" on 64 x H100, where "save_attention" does
not fit (XLA:GPU ahead of time: peak 75.54 GB of 80 with "full", 80.93 GB with it); there the expert-parallel
exchange takes 4,096 tokens at a time (moe_token_chunk), which brings the peak to 73.37 GB (8.3% headroom) for 0.2%
more FLOPs.

Data: point `data.sources` at your trajectory JSONL files (`a1jax data import` writes them). The default sources
are the small shipped quickstart files, so that the config validates anywhere.
"""
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the remat policy per layout, chosen with the planner's memory and FLOP figures (docs/sharding.md, "Remat policy"),
# and the tokens per expert-parallel exchange: 4,096 on H100 (64K tokens per GPU) keeps 8.3% headroom, not 5.6%
REMAT = {"v5p-512": "save_attention", "h100-64": "full"}
MOE_TOKEN_CHUNK = {"v5p-512": 8192, "h100-64": 4096}
MESHES = {
    # data x fsdp x expert x tensor x sequence
    "v5p-512": dict(data=1, fsdp=8, expert=8, tensor=1, sequence=4),  # 256 chips = 256 JAX devices; 64 batch shards
    "h100-64": dict(data=1, fsdp=8, expert=8, tensor=1, sequence=1),  # 8 nodes x 8 GPUs
}


def get_config(arg: str = "v5p-512") -> ml_collections.ConfigDict:
    if arg not in MESHES:
        raise ValueError(f"experiments/agents_a1_sft.py: unknown arg {arg!r}; choose one of {sorted(MESHES)}")
    c = ml_collections.ConfigDict()
    c.stage = "sft"
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = "qwen35_35b_a3b"
    c.model.overrides = ml_collections.ConfigDict(dict(
        dtype="bfloat16", param_dtype="float32", scan_layers=True, remat_policy=REMAT[arg], loss_chunk_size=2048,
        moe_impl="auto", attention_impl="auto", deltanet_impl="auto", moe_token_chunk=MOE_TOKEN_CHUNK[arg]))

    c.data = ml_collections.ConfigDict()
    c.data.base_dir = REPO
    c.data.sources = [dict(paths=["data/quickstart/tau_bench_airline.jsonl"], weight=1.0)]
    c.data.eval_sources = [dict(paths=["data/quickstart/heldout.jsonl"])]
    c.data.tokenizer = "qwen3_5"
    c.data.seq_len = 65536
    c.data.batch_size = 64
    c.data.eval_batch_size = 64
    c.data.packing = "first_fit"
    c.data.overlong = "split"
    c.data.supervise = "all"
    c.data.num_epochs = None
    c.data.seed = 0
    c.data.cache_dir = os.path.join(REPO, ".cache", "tokens")
    c.data.domains = ()

    c.mesh = ml_collections.ConfigDict(MESHES[arg])
    c.sharding_rules = ml_collections.ConfigDict()

    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=1e-5, warmup_steps=50, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1,
        b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0))
    c.train = ml_collections.ConfigDict(dict(
        steps=2000, microbatches=1, log_every=1, z_loss_coef=0.0, mtp_loss_coef=0.1, max_consecutive_skips=10))
    c.eval = ml_collections.ConfigDict(dict(every=200, batches=8))
    c.checkpoint = ml_collections.ConfigDict(dict(every=100, keep=3, async_save=True))
    return c
