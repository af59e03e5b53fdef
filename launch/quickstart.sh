#!/usr/bin/env bash
# The main job: sets up .venv (Python 3.12) with a1jax, then runs experiments/quickstart.py on CPU: stage-1 SFT of a
# tiny Qwen3.5-MoE on the real agentic trajectories in data/quickstart, with the Qwen3.5 tokenizer.
# Extra arguments go to `a1jax train`, e.g. `bash launch/quickstart.sh --config.train.steps=20`.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
a1jax_setup_venv
WORKDIR="${WORKDIR:-$A1JAX_ROOT/workdirs/quickstart}"
"$A1JAX_VENV/bin/a1jax" summary --preset qwen35_35b_a3b | head -3
"$A1JAX_VENV/bin/a1jax" train --config "$A1JAX_ROOT/experiments/quickstart.py" --workdir "$WORKDIR" "$@"
echo
echo "Done. Metrics: $WORKDIR/metrics.jsonl"
echo "TensorBoard:  $A1JAX_VENV/bin/pip install tensorboard && $A1JAX_VENV/bin/tensorboard --logdir $WORKDIR/tensorboard"
