#!/usr/bin/env bash
# The main job: sets up .venv (Python 3.12) with a1jax, then runs the whole Agents-A1 recipe on CPU with a tiny
# Qwen3.5-MoE and the real Qwen3.5 tokenizer, end to end:
#   0. expert demonstrations of the recipe's domains (`a1jax envs demos`, horizon 1), written into the workdir;
#   1. stage-1 SFT on them plus the shipped trajectories in data/quickstart  (experiments/recipe_tiny_sft.py);
#   2. one teacher per domain, expert iteration from the stage-1 checkpoint   (experiments/agents_a1_teacher.py);
#   3. multi-teacher, domain-routed on-policy distillation into the student   (experiments/agents_a1_distill.py);
#   then a per-domain table: the student's held-out success before and after, each teacher's, and the
#   student->teacher KL (python -m a1jax.distill.report).
# Every stage resumes from its last checkpoint when run again (delete the workdir to start over).
# WORKDIR (default workdirs/quickstart) and DOMAINS (default "instruction_following tool_calling") may be set;
# extra arguments go to the stage-1 `a1jax train`, e.g. `bash launch/quickstart.sh --config.train.steps=20`.
# About 37 minutes on an idle 2-core CPU.
# shellcheck source=launch/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
a1jax_setup_venv
WORKDIR="${WORKDIR:-$A1JAX_ROOT/workdirs/quickstart}"
DOMAINS="${DOMAINS:-instruction_following tool_calling}"
A1JAX="$A1JAX_VENV/bin/a1jax"
EXP="$A1JAX_ROOT/experiments"
colon="${DOMAINS// /:}"
start=$(date +%s)
stamp() { echo; echo "=== $1 ($(( $(date +%s) - start ))s elapsed)"; }

mkdir -p "$WORKDIR"
"$A1JAX" summary --preset qwen35_35b_a3b > "$WORKDIR/summary_35b_a3b.txt"  # the full model's layout
head -n 3 "$WORKDIR/summary_35b_a3b.txt"

stamp "0. expert demonstrations"
mkdir -p "$WORKDIR/demos"
for d in $DOMAINS; do
  out="$WORKDIR/demos/$d.jsonl"
  [ -s "$out" ] || "$A1JAX" envs demos --domain "$d" --n 1000 --horizon 1 --out "$out"
done

stamp "1. stage-1 SFT (demonstrations + data/quickstart)"
"$A1JAX" train --config "$EXP/recipe_tiny_sft.py:root=$WORKDIR,domains=$colon" --workdir "$WORKDIR/sft" "$@"

for d in $DOMAINS; do
  stamp "2. teacher: $d (expert iteration from the stage-1 checkpoint)"
  "$A1JAX" train --config "$EXP/agents_a1_teacher.py:tiny,domain=$d,root=$WORKDIR" --workdir "$WORKDIR/teacher_$d"
done

stamp "3. multi-teacher on-policy distillation"
"$A1JAX" train --config "$EXP/agents_a1_distill.py:tiny,root=$WORKDIR,domains=$colon" --workdir "$WORKDIR/distill"

stamp "report (held-out test tasks)"
"$A1JAX_VENV/bin/python" -m a1jax.distill.report --root "$WORKDIR" --domains "${DOMAINS// /,}" --n 32
echo
echo "Done in $(( $(date +%s) - start ))s. Workdirs: $WORKDIR/{sft,teacher_*,distill} (metrics.jsonl, checkpoints,"
echo "TensorBoard); the table is in $WORKDIR/report.json."
echo "TensorBoard:  $A1JAX_VENV/bin/pip install tensorboard && $A1JAX_VENV/bin/tensorboard --logdir $WORKDIR"
