#!/usr/bin/env bash
# Trains on TPU slices of a GKE cluster through xpk (`xpk workload create`, which wraps a Kubernetes JobSet). jax
# finds the other hosts itself on GKE TPU, so no A1JAX_* variables are set.
#
# Usage: launch/xpk.sh --cluster C --workload W --tpu-type TYPE --experiment EXPERIMENT --workdir DIR
#                      [--num-slices N] [--project P] [--zone Z] [--docker-image IMG | --base-docker-image IMG]
#                      [--max-restarts R] [--grace-period S] [--dry-run] [-- extra `a1jax train` flags]
#   --cluster, --workload  the xpk cluster, and a new workload name (lowercase, digits, '-')
#   --tpu-type             e.g. v5p-512, v5litepod-256, v6e-256
#   --num-slices           slices (default 1). More than 1 is untested: a1jax's mesh is not multislice-aware yet.
#   --experiment           experiments/FILE.py[:ARG], relative to the repository root
#   --workdir              checkpoints, metrics, TensorBoard: gs://BUCKET/DIR (the pods' service account needs
#                          read/write access to the bucket), or a shared volume mounted in every pod
#   --base-docker-image    (default python:3.12) xpk copies a clean copy of this checkout on top; the pod then
#                          installs .venv with jax[tpu] before training (a few minutes per start)
#   --docker-image         instead: a ready image with a1jax and jax[tpu] installed; runs `a1jax train` in it
#   --max-restarts         JobSet restarts after a failure or preemption (default 3); each restart resumes
#   --grace-period         seconds between SIGTERM and SIGKILL on preemption or delete (default 120): the trainer
#                          saves a checkpoint in that time
#   --dry-run              print the commands instead of running them
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER="" WORKLOAD="" TPU_TYPE="" SLICES=1 EXPERIMENT="" WORKDIR="" PROJECT="" ZONE="" IMAGE="" BASE_IMAGE=""
RESTARTS=3 GRACE=120 EXTRA=()
while (($#)); do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --cluster) a1jax_need_value "$@"; CLUSTER="$2"; shift 2 ;;
    --workload) a1jax_need_value "$@"; WORKLOAD="$2"; shift 2 ;;
    --tpu-type) a1jax_need_value "$@"; TPU_TYPE="$2"; shift 2 ;;
    --num-slices) a1jax_need_value "$@"; SLICES="$2"; shift 2 ;;
    --experiment) a1jax_need_value "$@"; EXPERIMENT="$2"; shift 2 ;;
    --workdir) a1jax_need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --project) a1jax_need_value "$@"; PROJECT="$2"; shift 2 ;;
    --zone) a1jax_need_value "$@"; ZONE="$2"; shift 2 ;;
    --docker-image) a1jax_need_value "$@"; IMAGE="$2"; shift 2 ;;
    --base-docker-image) a1jax_need_value "$@"; BASE_IMAGE="$2"; shift 2 ;;
    --max-restarts) a1jax_need_value "$@"; RESTARTS="$2"; shift 2 ;;
    --grace-period) a1jax_need_value "$@"; GRACE="$2"; shift 2 ;;
    --dry-run) A1JAX_DRY_RUN=1; shift ;;
    -h | --help) a1jax_help ;;
    --) shift; EXTRA=("$@"); break ;;
    *) a1jax_die "unknown flag '$1' (flags for \`a1jax train\` go after '--')" ;;
  esac
done
[[ -n $CLUSTER ]] || a1jax_die "--cluster is required"
[[ -n $WORKLOAD ]] || a1jax_die "--workload is required"
a1jax_check_name --workload "$WORKLOAD"
[[ -n $TPU_TYPE ]] || a1jax_die "--tpu-type is required (e.g. v5p-512)"
a1jax_check_int --num-slices "$SLICES" 1
a1jax_check_int --max-restarts "$RESTARTS" 0
a1jax_check_int --grace-period "$GRACE" 1
[[ -n $EXPERIMENT ]] || a1jax_die "--experiment is required (experiments/FILE.py[:ARG])"
a1jax_check_experiment --experiment "$EXPERIMENT"
a1jax_check_workdir --workdir "$WORKDIR"
[[ -z $IMAGE || -z $BASE_IMAGE ]] || a1jax_die "--docker-image and --base-docker-image exclude each other"

XPK=(xpk workload create "--cluster=$CLUSTER" "--workload=$WORKLOAD" "--tpu-type=$TPU_TYPE" "--num-slices=$SLICES")
[[ -z $PROJECT ]] || XPK+=("--project=$PROJECT")
[[ -z $ZONE ]] || XPK+=("--zone=$ZONE")
XPK+=("--max-restarts=$RESTARTS" "--termination-grace-period-seconds=$GRACE")
train="$(a1jax_quote train --config "$EXPERIMENT" --workdir "$WORKDIR" "${EXTRA[@]}")"
if [[ -n $IMAGE ]]; then
  a1jax_run "${XPK[@]}" "--docker-image=$IMAGE" "--command=a1jax $train"
else
  # xpk builds the image from --script-dir; a clean copy keeps this machine's .venv and caches out of it.
  stage="${TMPDIR:-/tmp}/a1jax-xpk-$WORKLOAD"
  a1jax_run rm -rf "$stage"
  a1jax_run mkdir -p "$stage"
  a1jax_run tar -cf "$stage.tar" --exclude=./.git --exclude='./.venv*' --exclude=./.cache --exclude=./.pytest_cache \
    --exclude=./workdirs -C "$A1JAX_ROOT" .
  a1jax_run tar -xf "$stage.tar" -C "$stage"
  a1jax_run "${XPK[@]}" "--base-docker-image=${BASE_IMAGE:-python:3.12}" "--script-dir=$stage" \
    "--command=source launch/env.sh && a1jax_setup_venv && .venv/bin/pip install -q 'jax[tpu]' && .venv/bin/a1jax \
$train"
fi
