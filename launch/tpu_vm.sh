#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice: creates the slice (or reuses it if it is READY), copies this checkout to every
# worker, installs .venv with jax[tpu] there, then runs the same `a1jax train` on all workers at once. jax finds
# the other workers itself on a TPU slice, so no A1JAX_* variables are set.
#
# Usage: launch/tpu_vm.sh --name NAME --zone ZONE --accelerator-type TYPE --experiment EXPERIMENT --workdir DIR
#                         [--project P] [--version V] [--spot] [--sync scp|git] [--git-url URL] [--git-rev REV]
#                         [--remote-dir D] [--skip-setup] [--dry-run] [-- extra `a1jax train` flags]
#   --name               TPU VM name (lowercase, digits, '-')
#   --zone, --project    where it lives (--project defaults to gcloud's configured project)
#   --accelerator-type   e.g. v5p-512, v5litepod-16, v6e-8, v4-32
#   --version            TPU software version (default by generation: v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5,
#                        v5litepod v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base)
#   --spot               create the slice as Spot capacity (preemptible; relaunch to resume)
#   --experiment         experiments/FILE.py[:ARG], relative to the repository root
#   --workdir            checkpoints, metrics and logs: gs://BUCKET/DIR (what a multi-host slice needs: every worker
#                        sees it), or a local path (single-host slice) or a shared NFS/Filestore mount. Relative paths
#                        are relative to --remote-dir.
#   --sync scp           (default) tar this checkout (without .git, .venv*, .cache, workdirs) and scp it to all
#                        workers; --sync git clones --git-url (default: origin) at --git-rev (default: HEAD)
#   --remote-dir         the checkout on each worker, relative to the home directory (default a1jax)
#   --skip-setup         do not run the install step (.venv with jax[tpu]; the workers need Python 3.12)
#   --dry-run            print the commands instead of running them
# Each worker logs to WORKDIR/logs/worker-HOSTNAME.log (REMOTE_DIR/logs/ for a gs:// workdir); all workers' output also streams here. Stopping: relaunch
# resumes from the last checkpoint (the trainer saves one on SIGTERM).
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME="" ZONE="" PROJECT="" TYPE="" VERSION="" SPOT=0 EXPERIMENT="" WORKDIR="" SYNC=scp GIT_URL="" GIT_REV=""
REMOTE_DIR=a1jax SETUP=1 EXTRA=()
while (($#)); do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --name) a1jax_need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) a1jax_need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) a1jax_need_value "$@"; PROJECT="$2"; shift 2 ;;
    --accelerator-type) a1jax_need_value "$@"; TYPE="$2"; shift 2 ;;
    --version) a1jax_need_value "$@"; VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --experiment) a1jax_need_value "$@"; EXPERIMENT="$2"; shift 2 ;;
    --workdir) a1jax_need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --sync) a1jax_need_value "$@"; SYNC="$2"; shift 2 ;;
    --git-url) a1jax_need_value "$@"; GIT_URL="$2"; shift 2 ;;
    --git-rev) a1jax_need_value "$@"; GIT_REV="$2"; shift 2 ;;
    --remote-dir) a1jax_need_value "$@"; REMOTE_DIR="$2"; shift 2 ;;
    --skip-setup) SETUP=0; shift ;;
    --dry-run) A1JAX_DRY_RUN=1; shift ;;
    -h | --help) a1jax_help ;;
    --) shift; EXTRA=("$@"); break ;;
    *) a1jax_die "unknown flag '$1' (flags for \`a1jax train\` go after '--')" ;;
  esac
done
[[ -n $NAME ]] || a1jax_die "--name is required"
a1jax_check_name --name "$NAME"
[[ -n $ZONE ]] || a1jax_die "--zone is required (e.g. us-east5-a)"
[[ -n $TYPE ]] || a1jax_die "--accelerator-type is required (e.g. v5p-512)"
[[ -n $EXPERIMENT ]] || a1jax_die "--experiment is required (experiments/FILE.py[:ARG])"
a1jax_check_experiment --experiment "$EXPERIMENT"
a1jax_check_workdir --workdir "$WORKDIR"
if [[ -z $VERSION ]]; then
  case "$TYPE" in
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
    *) a1jax_die "--accelerator-type $TYPE: no default --version for it; pass --version" ;;
  esac
fi
case "$SYNC" in
  scp) [[ -z $GIT_URL && -z $GIT_REV ]] || a1jax_die "--git-url/--git-rev need --sync git" ;;
  git)
    [[ -n $GIT_URL ]] || GIT_URL="$(git -C "$A1JAX_ROOT" remote get-url origin 2>/dev/null)" ||
      a1jax_die "--sync git: this checkout has no 'origin' remote; pass --git-url"
    [[ -n $GIT_REV ]] || GIT_REV="$(git -C "$A1JAX_ROOT" rev-parse HEAD)" ;;
  *) a1jax_die "--sync must be scp or git, got '$SYNC'" ;;
esac
[[ $REMOTE_DIR =~ ^[A-Za-z0-9_./-]+$ ]] || a1jax_die "--remote-dir must be a plain relative path, got '$REMOTE_DIR'"

WHERE=("--zone=$ZONE")
[[ -z $PROJECT ]] || WHERE+=("--project=$PROJECT")
TPU=(gcloud compute tpus tpu-vm)
on_all_workers() {  # REMOTE_COMMAND
  a1jax_run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all "--command=$1"
}

# 1. The slice: reuse it if READY, create it if it does not exist, stop on any other state (e.g. PREEMPTED).
DESCRIBE=("${TPU[@]}" describe "$NAME" "${WHERE[@]}" "--format=value(state)")
CREATE=("${TPU[@]}" create "$NAME" "${WHERE[@]}" "--accelerator-type=$TYPE" "--version=$VERSION")
((SPOT)) && CREATE+=(--spot)
if ((A1JAX_DRY_RUN)); then
  a1jax_quote "${DESCRIBE[@]}"
  echo "# if it prints nothing (no such TPU VM):"
  a1jax_quote "${CREATE[@]}"
else
  state="$("${DESCRIBE[@]}" 2>/dev/null || true)"
  if [[ -z $state ]]; then
    "${CREATE[@]}"
  elif [[ $state != READY ]]; then
    a1jax_die "TPU VM $NAME is $state, not READY; delete it ('${TPU[*]} delete $NAME ${WHERE[*]}') and rerun"
  fi
fi

# 2. The code on every worker.
q_remote="$(a1jax_quote "$REMOTE_DIR")"
if [[ $SYNC == scp ]]; then
  tarball="${TMPDIR:-/tmp}/a1jax-src-$NAME.tar.gz"
  a1jax_run tar -czf "$tarball" --exclude=./.git --exclude='./.venv*' --exclude=./.cache --exclude=./.pytest_cache \
    --exclude=./workdirs -C "$A1JAX_ROOT" .
  a1jax_run "${TPU[@]}" scp "$tarball" "$NAME:a1jax-src.tar.gz" "${WHERE[@]}" --worker=all
  on_all_workers "mkdir -p $q_remote && tar -xzf a1jax-src.tar.gz -C $q_remote"
else
  on_all_workers "(test -d $q_remote/.git || git clone -q $(a1jax_quote "$GIT_URL") $q_remote) && git -C $q_remote \
fetch -q origin && git -C $q_remote checkout -q --detach $(a1jax_quote "$GIT_REV")"
fi

# 3. .venv with the TPU build of the installed jax version (pip keeps jax, adds jaxlib and libtpu for it).
if ((SETUP)); then
  on_all_workers "cd $q_remote && source launch/env.sh && a1jax_setup_venv && .venv/bin/pip install -q 'jax[tpu]'"
fi

# 4. The same command on all workers; each also keeps its own log.
q_logs="$(a1jax_quote "$(a1jax_log_dir "$WORKDIR" logs)")"
on_all_workers "cd $q_remote && mkdir -p $q_logs && set -o pipefail && $(a1jax_quote .venv/bin/a1jax train \
--config "$EXPERIMENT" --workdir "$WORKDIR" "${EXTRA[@]}") 2>&1 | tee -a $q_logs/worker-\$(hostname).log"
