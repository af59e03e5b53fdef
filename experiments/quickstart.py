"""Quickstart: stage-1 SFT of a tiny Qwen3.5-MoE on the real agentic trajectories shipped in data/quickstart.

    a1jax train --config experiments/quickstart.py --workdir workdirs/quickstart

Hardware: CPU (any laptop; 2 cores is enough). Expected: about 7-8 minutes on 2 cores, 4,096-token rows at
~1,000 tokens/s. Measured (2-core CPU, seed 0): train loss 12.17 (steps 1-10) -> 4.97 (steps 111-120), held-out
loss 8.07 at step 40 -> 7.06 at step 120 (ln 248,320 = 12.42 is the uniform start).
`bash launch/quickstart.sh` runs this.
The model is tiny (4 layers: 3 Gated DeltaNet + 1 gated attention, 8 experts top-2) but uses the real tokenizer,
chat template, loss masks, packing, optimizer, checkpoints and metrics of the full recipe.
"""
import os

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "sft"
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"
    c.model.overrides = ml_collections.ConfigDict(dict(
        vocab_size=248320, hidden_size=64, linear_key_head_dim=32, linear_value_head_dim=32,
        moe_intermediate_size=64, shared_expert_intermediate_size=64, loss_chunk_size=256, deltanet_chunk_size=64,
        max_position_embeddings=8192))

    c.data = ml_collections.ConfigDict()
    c.data.base_dir = REPO
    c.data.sources = [
        dict(paths=["data/quickstart/tau_bench_airline.jsonl"], weight=2.0),
        dict(paths=["data/quickstart/swe_agent.jsonl"], weight=1.0),
        dict(paths=["data/quickstart/toolbench.jsonl"], weight=1.0),
    ]
    c.data.eval_sources = [dict(paths=["data/quickstart/heldout.jsonl"])]
    c.data.tokenizer = "qwen3_5"
    c.data.seq_len = 4096
    c.data.batch_size = 1
    c.data.eval_batch_size = 1
    c.data.packing = "first_fit"
    c.data.overlong = "split"
    c.data.supervise = "all"
    c.data.num_epochs = 10
    c.data.seed = 0
    c.data.cache_dir = os.path.join(REPO, ".cache", "tokens")
    c.data.domains = ("customer_service", "engineering", "general_agentic")

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1, sequence=1))
    c.sharding_rules = ml_collections.ConfigDict()

    c.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=3e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.01,
        b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0))

    c.train = ml_collections.ConfigDict(dict(
        steps=120, microbatches=1, log_every=10, z_loss_coef=0.0, mtp_loss_coef=0.0, max_consecutive_skips=5))
    c.eval = ml_collections.ConfigDict(dict(every=40, batches=4))
    c.checkpoint = ml_collections.ConfigDict(dict(every=50, keep=2, async_save=True))

    if arg == "smoke":  # a few steps of 1,024-token rows, for CI (at vocabulary 248,320 the LM head is most of a step)
        c.train.steps, c.train.log_every, c.eval.every, c.eval.batches, c.checkpoint.every = 4, 2, 4, 1, 2
        c.data.seq_len = 1024
    return c
