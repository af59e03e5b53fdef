#!/usr/bin/env bash
# Submits launch/slurm.sbatch with its #SBATCH lines rendered from these flags (the script goes to sbatch on
# stdin, with this checkout's path and the train arguments filled in).
#
# Usage: launch/slurm.sh --experiment EXPERIMENT --workdir DIR [--nodes N] [--gpus-per-node G] [--per-node]
#                        [--job-name NAME] [--time T] [--partition P] [--account A] [--dry-run]
#                        [-- extra `a1jax train` flags]
#   --experiment     experiments/FILE.py[:ARG], relative to the repository root
#   --workdir        absolute path on a filesystem all nodes share (not gs://); logs go to DIR/logs
#   --nodes          nodes (default 1)
#   --gpus-per-node  GPUs per node (default 8); one process per GPU unless --per-node
#   --per-node       one process per node, driving all its GPUs
#   --job-name       SLURM job name (default a1jax)
#   --time, --partition, --account   passed to SLURM as given
#   --dry-run        print the sbatch command and the script it would submit, instead of submitting
# See launch/slurm.sbatch for the environment variables and preemption (SIGTERM 120 s before the time limit).
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EXPERIMENT="" WORKDIR="" NODES=1 GPUS=8 PER_NODE=0 JOB_NAME=a1jax TIME="" PARTITION="" ACCOUNT="" EXTRA=()
while (($#)); do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --experiment) a1jax_need_value "$@"; EXPERIMENT="$2"; shift 2 ;;
    --workdir) a1jax_need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --nodes) a1jax_need_value "$@"; NODES="$2"; shift 2 ;;
    --gpus-per-node) a1jax_need_value "$@"; GPUS="$2"; shift 2 ;;
    --per-node) PER_NODE=1; shift ;;
    --job-name) a1jax_need_value "$@"; JOB_NAME="$2"; shift 2 ;;
    --time) a1jax_need_value "$@"; TIME="$2"; shift 2 ;;
    --partition) a1jax_need_value "$@"; PARTITION="$2"; shift 2 ;;
    --account) a1jax_need_value "$@"; ACCOUNT="$2"; shift 2 ;;
    --dry-run) A1JAX_DRY_RUN=1; shift ;;
    -h | --help) a1jax_help ;;
    --) shift; EXTRA=("$@"); break ;;
    *) a1jax_die "unknown flag '$1' (flags for \`a1jax train\` go after '--')" ;;
  esac
done
[[ -n $EXPERIMENT ]] || a1jax_die "--experiment is required (experiments/FILE.py[:ARG])"
a1jax_check_experiment --experiment "$EXPERIMENT"
a1jax_check_workdir --workdir "$WORKDIR"
[[ $WORKDIR == /* ]] || a1jax_die "--workdir must be an absolute path on a filesystem all nodes share, got '$WORKDIR'"
a1jax_check_int --nodes "$NODES" 1
a1jax_check_int --gpus-per-node "$GPUS" 1
for var in JOB_NAME TIME PARTITION ACCOUNT WORKDIR; do
  flag="${var,,}"
  [[ ${!var} != *[[:space:]]* ]] || a1jax_die "--${flag//_/-} must not contain spaces (it goes into #SBATCH lines)"
done

tasks_per_node=$GPUS
((PER_NODE)) && tasks_per_node=1
header=(
  "#SBATCH --job-name=$JOB_NAME"
  "#SBATCH --nodes=$NODES"
  "#SBATCH --ntasks-per-node=$tasks_per_node"
  "#SBATCH --gpus-per-node=$GPUS"
)
[[ -z $TIME ]] || header+=("#SBATCH --time=$TIME")
[[ -z $PARTITION ]] || header+=("#SBATCH --partition=$PARTITION")
[[ -z $ACCOUNT ]] || header+=("#SBATCH --account=$ACCOUNT")
header+=("#SBATCH --signal=TERM@120" "#SBATCH --requeue" "#SBATCH --open-mode=append"
  "#SBATCH --output=$WORKDIR/logs/slurm-%x-%j.out")

# The body of slurm.sbatch from `set -euo pipefail` on, with the arguments it would get on sbatch's command line.
template="$A1JAX_ROOT/launch/slurm.sbatch"
body="$(sed -n '/^set -euo pipefail$/,$p' "$template")"
[[ -n $body ]] || a1jax_die "$template has no 'set -euo pipefail' line to start the body at"
script="$(
  echo "#!/bin/bash"
  echo "# Rendered by launch/slurm.sh from launch/slurm.sbatch."
  printf '%s\n' "${header[@]}"
  echo "set -- $(a1jax_quote "$EXPERIMENT" "$WORKDIR" "${EXTRA[@]}")"
  echo "A1JAX_ROOT=$(a1jax_quote "$A1JAX_ROOT")"
  echo "$body"
)"

a1jax_run mkdir -p "$WORKDIR/logs"
if ((A1JAX_DRY_RUN)); then
  echo "sbatch <<'A1JAX_SBATCH_EOF'"
  echo "$script"
  echo "A1JAX_SBATCH_EOF"
else
  sbatch <<<"$script"
fi
