#!/usr/bin/env bash
# The main job: sets up .venv (Python 3.12) with a1jax, then runs the whole Agents-A1 recipe on CPU with a tiny
# Qwen3.5-MoE and the compact Qwen3.5 vocabulary (4,096 ids, lossless; a1jax/data/tokenizers/compact.py), end to end,
# on three domains: instruction_following and tool_calling (one call) and search at horizon 2 (two dependent calls):
#   0. expert demonstrations of the recipe's domains (`a1jax envs demos`), written into the workdir, and a synthetic
#      copy warm-up of the freshly initialised model (`a1jax warmup`, about 2 minutes), a stand-in for pretraining;
#   1. stage-1 SFT from the warm-up on the demonstrations (experiments/recipe_tiny_sft.py; the real trajectories of
#      data/quickstart are left out of this mix, see SHIPPED_NOTE there);
#   2. one teacher per domain from the stage-1 checkpoint, more SFT steps on its own domain (agents_a1_teacher.py:tiny),
#      one after the other (two trainings side by side on 2 cores run 4x slower each);
#   3. multi-teacher, domain-routed on-policy distillation into the student, after checking on the validation split
#      that each teacher beats the student (agents_a1_distill.py:tiny);
#   then a per-domain table on 128 held-out test tasks per domain with 95% intervals: the student's success before
#   and after, each teacher's, and the student->teacher KL (python -m a1jax.distill.report), and a figure.
# Every stage resumes from its last checkpoint when run again (delete the workdir to start over).
# WORKDIR (default workdirs/quickstart) may be set; extra arguments go to the stage-1 `a1jax train`, e.g.
# `bash launch/quickstart.sh --config.train.steps=20`.
# Measured (2026-12-07 late night, 2-core AMD EPYC VM, these settings, tcmalloc): 1,418 s end to end; 3,102 s on the
# earlier host with huge pages alone (README, "Results, as measured so far").
# shellcheck source=launch/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
a1jax_setup_venv
WORKDIR="${WORKDIR:-$A1JAX_ROOT/workdirs/quickstart}"
DOMAINS="instruction_following tool_calling search"
A1JAX="$A1JAX_VENV/bin/a1jax"
EXP="$A1JAX_ROOT/experiments"
# One XLA thread per process: for a model this small, XLA:CPU's multi-threaded Eigen spends more on synchronising
# two threads than it gains (2.2 s against 3.4 s per stage-1 step on 2 cores).
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"  # a CPU job, also where the tpu-aot extra installed libtpu
# One persistent compilation cache for every process of the job: a program one process compiled (the greedy rollout
# and KL programs of stage 3's teacher check and of the report's two processes) is loaded by the next, with the same
# results (the report's instruction_following part: 34 s warm against 57 s cold, the same figures).
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORKDIR/jax_cache}"
start=$(date +%s)
stamp() { echo; echo "=== $1 ($(( $(date +%s) - start ))s elapsed)"; }
horizon() { case "$1" in search) echo 2;; *) echo 1;; esac; }  # recipe_tiny_sft.HORIZONS
options() {  # recipe_tiny_sft.ENV_OPTIONS
  case "$1" in tool_calling) echo "--option tool_set=apis --option values=code";; search) echo "--option world=0";; esac
}

mkdir -p "$WORKDIR"
"$A1JAX" summary --preset qwen35_35b_a3b > "$WORKDIR/summary_35b_a3b.txt"  # the full model's layout
head -n 3 "$WORKDIR/summary_35b_a3b.txt"

stamp "0. expert demonstrations"
mkdir -p "$WORKDIR/demos"
for d in $DOMAINS; do
  out="$WORKDIR/demos/$d.jsonl"
  # shellcheck disable=SC2046
  [ -s "$out" ] || "$A1JAX" envs demos --domain "$d" --n 2000 --horizon "$(horizon "$d")" $(options "$d") --out "$out"
done

stamp "0. copy warm-up"
if [ ! -s "$WORKDIR/warmup/warmup.json" ]; then
  rm -rf "$WORKDIR/warmup"  # an interrupted warm-up (about 2 minutes) starts over
  "$A1JAX" warmup --config "$EXP/recipe_tiny_sft.py:root=$WORKDIR" --out "$WORKDIR/warmup"
fi

stamp "1. stage-1 SFT (demonstrations, from the warm-up)"
"$A1JAX" train --config "$EXP/recipe_tiny_sft.py:root=$WORKDIR" --workdir "$WORKDIR/sft" \
  --init_from "$WORKDIR/warmup" "$@"

stamp "2. teachers (SFT on each domain from the stage-1 checkpoint)"
for d in $DOMAINS; do
  "$A1JAX" train --config "$EXP/agents_a1_teacher.py:tiny,domain=$d,root=$WORKDIR" --workdir "$WORKDIR/teacher_$d" \
    2>&1 | sed -u "s/^/[teacher $d] /"
  [ -d "$WORKDIR/teacher_$d/checkpoints" ] || { echo "teacher $d failed (see above)" >&2; exit 1; }
done

stamp "3. multi-teacher on-policy distillation"
"$A1JAX" train --config "$EXP/agents_a1_distill.py:tiny,root=$WORKDIR" --workdir "$WORKDIR/distill"

stamp "report (held-out test tasks)"
"$A1JAX_VENV/bin/python" -m a1jax.distill.report --root "$WORKDIR" --n 128 --jobs 2
echo
echo "Done in $(( $(date +%s) - start ))s. Workdirs: $WORKDIR/{sft,teacher_*,distill} (metrics.jsonl, checkpoints,"
echo "TensorBoard); the table and figure are $WORKDIR/report.json and $WORKDIR/report.png."
echo "TensorBoard:  $A1JAX_VENV/bin/pip install tensorboard && $A1JAX_VENV/bin/tensorboard --logdir $WORKDIR"
