#!/usr/bin/env bash
# Runs `a1jax train` on this machine as one process, or as N processes that form one JAX job (A1JAX_* variables,
# see docs/launching.md), e.g. to check a multi-host code path on CPU before a pod run.
#
# Usage: launch/local.sh EXPERIMENT [--processes N] [--cpu-devices M] [--workdir DIR] [--port P] [--dry-run]
#                        [-- extra `a1jax train` flags]
#   EXPERIMENT       experiments/FILE.py[:ARG]
#   --processes N    processes to start (default 1); N > 1 sets A1JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT,
#                    A1JAX_NUM_PROCESSES=N and A1JAX_PROCESS_ID=0..N-1
#   --cpu-devices M  run on CPU with M virtual devices per process (JAX_PLATFORMS=cpu, A1JAX_CPU_DEVICES=M)
#   --workdir DIR    checkpoints and metrics (default workdirs/FILE or workdirs/FILE-ARG), or gs://BUCKET/DIR (logs
#                    then go to workdirs/logs); relaunching resumes
#   --port P         coordinator port (default: a free port)
#   --dry-run        print the commands instead of running them
#   -h, --help       this text
# Each process appends to DIR/logs/process-I.log; process 0 is also shown here. SIGTERM or Ctrl-C is forwarded to all
# processes as SIGTERM (the trainer then saves a checkpoint and exits). If one process fails, the others are
# stopped (SIGTERM, then SIGKILL after 30 s) and the launcher exits with the failed process's status.
# Needs .venv (bash launch/quickstart.sh creates it) or A1JAX_VENV.
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EXPERIMENT="" PROCESSES=1 CPU_DEVICES="" WORKDIR="" PORT="" EXTRA=()
while (($#)); do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --processes) a1jax_need_value "$@"; PROCESSES="$2"; shift 2 ;;
    --cpu-devices) a1jax_need_value "$@"; CPU_DEVICES="$2"; shift 2 ;;
    --workdir) a1jax_need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --port) a1jax_need_value "$@"; PORT="$2"; shift 2 ;;
    --dry-run) A1JAX_DRY_RUN=1; shift ;;
    -h | --help) a1jax_help ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) a1jax_die "unknown flag '$1' (flags for \`a1jax train\` go after '--')" ;;
    *) [[ -z $EXPERIMENT ]] || a1jax_die "unexpected argument '$1' (EXPERIMENT is already '$EXPERIMENT')"
       EXPERIMENT="$1"; shift ;;
  esac
done
[[ -n $EXPERIMENT ]] || a1jax_die "EXPERIMENT (experiments/FILE.py[:ARG]) is required"
a1jax_check_experiment EXPERIMENT "$EXPERIMENT"
a1jax_check_int --processes "$PROCESSES" 1
[[ -z $CPU_DEVICES ]] || a1jax_check_int --cpu-devices "$CPU_DEVICES" 1
if [[ -z $WORKDIR ]]; then
  stem="$(basename "${EXPERIMENT%%:*}" .py)"
  [[ $EXPERIMENT == *:* ]] && stem="$stem-${EXPERIMENT#*:}"
  WORKDIR="$A1JAX_ROOT/workdirs/$stem"
fi
a1jax_check_workdir --workdir "$WORKDIR"
if ((PROCESSES > 1)) && [[ -z $PORT ]]; then
  py="$A1JAX_VENV/bin/python"; [[ -x $py ]] || py=python3
  PORT="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ -z $PORT ]] || a1jax_check_int --port "$PORT" 1
if ((!A1JAX_DRY_RUN)) && [[ ! -x $A1JAX_VENV/bin/a1jax ]]; then
  a1jax_die "$A1JAX_VENV/bin/a1jax not found: run 'bash launch/quickstart.sh' once, or set A1JAX_VENV"
fi

LOGDIR="$(a1jax_log_dir "$WORKDIR" "$A1JAX_ROOT/workdirs/logs")"
TRAIN=("$A1JAX_VENV/bin/a1jax" train --config "$EXPERIMENT" --workdir "$WORKDIR" "${EXTRA[@]}")
a1jax_run mkdir -p "$LOGDIR"
pids=()
forward() {  # $1: why
  echo "$A1JAX_PROG: $1: sending SIGTERM to the $PROCESSES process(es); the trainer saves a checkpoint" >&2
  local pid
  for pid in "${pids[@]}"; do [[ -z $pid ]] || kill -TERM "$pid" 2>/dev/null || true; done
}
((A1JAX_DRY_RUN)) || trap 'forward SIGTERM' TERM
((A1JAX_DRY_RUN)) || trap 'forward SIGINT' INT
for ((i = 0; i < PROCESSES; i++)); do
  vars=()
  if ((PROCESSES > 1)); then
    vars+=("A1JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT" "A1JAX_NUM_PROCESSES=$PROCESSES" "A1JAX_PROCESS_ID=$i")
  fi
  [[ -z $CPU_DEVICES ]] || vars+=(JAX_PLATFORMS=cpu "A1JAX_CPU_DEVICES=$CPU_DEVICES")
  log="$LOGDIR/process-$i.log"
  if ((A1JAX_DRY_RUN)); then
    if ((i == 0)); then
      echo "$(a1jax_quote env "${vars[@]}" "${TRAIN[@]}") > >(tee -a $(a1jax_quote "$log")) 2>&1 &"
    else
      echo "$(a1jax_quote env "${vars[@]}" "${TRAIN[@]}") >> $(a1jax_quote "$log") 2>&1 &"
    fi
  elif ((i == 0)); then
    env "${vars[@]}" "${TRAIN[@]}" > >(tee -a "$log") 2>&1 &
    pids+=("$!")
  else
    env "${vars[@]}" "${TRAIN[@]}" >>"$log" 2>&1 &
    pids+=("$!")
  fi
done
if ((A1JAX_DRY_RUN)); then
  echo "wait"
  exit 0
fi

# Poll instead of `wait -n` (bash >= 5.1 only): reap each process as it ends; the first failure stops the rest,
# which would otherwise block forever in a collective waiting for the failed one.
status=0 left=$PROCESSES kill_at=0
while ((left)); do
  for i in "${!pids[@]}"; do
    pid="${pids[i]}"
    if [[ -z $pid ]] || kill -0 "$pid" 2>/dev/null; then continue; fi  # reaped already, or still running
    rc=0
    wait "$pid" || rc=$?
    pids[i]="" left=$((left - 1))
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "$A1JAX_PROG: process $i failed (exit $rc); last lines of $LOGDIR/process-$i.log:" >&2
      tail -n 20 "$LOGDIR/process-$i.log" >&2 || true
      if ((left)); then forward "process $i failed"; fi
      kill_at=$((SECONDS + 30))
    fi
  done
  if ((kill_at && SECONDS >= kill_at && left)); then
    echo "$A1JAX_PROG: processes still running 30 s after the failure; sending SIGKILL" >&2
    for pid in "${pids[@]}"; do [[ -z $pid ]] || kill -KILL "$pid" 2>/dev/null || true; done
    kill_at=0
  fi
  ((left == 0)) || sleep 1
done
echo "$A1JAX_PROG: logs in $LOGDIR/process-*.log" >&2
exit "$status"
