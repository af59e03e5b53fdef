#!/usr/bin/env bash
# Renders a Kubernetes JobSet for GPU node pools (one pod per node, one `a1jax train` process per pod driving all
# of the node's GPUs) and applies it with kubectl.
#
# Usage: launch/jobset.sh --name NAME --image IMAGE --experiment EXPERIMENT --workdir DIR [--nodes N]
#                         [--gpus-per-node G] [--pvc CLAIM] [--namespace NS] [--max-restarts R]
#                         [--grace-period S] [--port P] [--dry-run] [-- extra `a1jax train` flags]
#   --name           JobSet name (lowercase, digits, '-'); also the pods' DNS subdomain
#   --image          a container image with a1jax and the CUDA build of jax installed (`a1jax` on PATH) and
#                    the experiment file at EXPERIMENT relative to its working directory
#   --experiment     experiments/FILE.py[:ARG]
#   --workdir        gs://BUCKET/DIR, or an absolute path inside the pods; with --pvc the claim is mounted there,
#                    and it must be ReadWriteMany so that all pods share it
#   --nodes          pods = processes (default 1); --gpus-per-node G GPUs each (default 8)
#   --max-restarts   JobSet restarts of all pods after a failure or preemption (default 3); each resumes
#   --grace-period   terminationGracePeriodSeconds (default 120): SIGTERM, then this long to save a checkpoint
#   --port           coordinator port on pod 0 (default 8476, as a1jax.distributed)
#   --dry-run        print the kubectl command and the JobSet instead of applying it
# Environment per pod: A1JAX_COORDINATOR_ADDRESS=NAME-workers-0-0.NAME:PORT (pod 0 through the JobSet's headless
# service), A1JAX_NUM_PROCESSES=N, A1JAX_PROCESS_ID from the pod's job-completion index (JOB_COMPLETION_INDEX).
# Logs: `kubectl logs` per pod (NAME-workers-0-I-*).
# shellcheck source=launch/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME="" IMAGE="" EXPERIMENT="" WORKDIR="" NODES=1 GPUS=8 PVC="" NAMESPACE="" RESTARTS=3 GRACE=120 PORT=8476
EXTRA=()
while (($#)); do
  case "$1" in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --name) a1jax_need_value "$@"; NAME="$2"; shift 2 ;;
    --image) a1jax_need_value "$@"; IMAGE="$2"; shift 2 ;;
    --experiment) a1jax_need_value "$@"; EXPERIMENT="$2"; shift 2 ;;
    --workdir) a1jax_need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --nodes) a1jax_need_value "$@"; NODES="$2"; shift 2 ;;
    --gpus-per-node) a1jax_need_value "$@"; GPUS="$2"; shift 2 ;;
    --pvc) a1jax_need_value "$@"; PVC="$2"; shift 2 ;;
    --namespace) a1jax_need_value "$@"; NAMESPACE="$2"; shift 2 ;;
    --max-restarts) a1jax_need_value "$@"; RESTARTS="$2"; shift 2 ;;
    --grace-period) a1jax_need_value "$@"; GRACE="$2"; shift 2 ;;
    --port) a1jax_need_value "$@"; PORT="$2"; shift 2 ;;
    --dry-run) A1JAX_DRY_RUN=1; shift ;;
    -h | --help) a1jax_help ;;
    --) shift; EXTRA=("$@"); break ;;
    *) a1jax_die "unknown flag '$1' (flags for \`a1jax train\` go after '--')" ;;
  esac
done
[[ -n $NAME ]] || a1jax_die "--name is required"
a1jax_check_name --name "$NAME"
[[ -n $IMAGE ]] || a1jax_die "--image is required (an image with a1jax and jax[cuda12] installed)"
[[ -n $EXPERIMENT ]] || a1jax_die "--experiment is required (experiments/FILE.py[:ARG])"
a1jax_check_experiment --experiment "$EXPERIMENT"
a1jax_check_workdir --workdir "$WORKDIR"
[[ $WORKDIR == /* || $WORKDIR == gs://* ]] ||
  a1jax_die "--workdir must be gs://BUCKET/DIR or an absolute path inside the pods, got '$WORKDIR'"
[[ -z $PVC || $WORKDIR != gs://* ]] || a1jax_die "--pvc mounts a volume at --workdir, which a gs:// workdir does not use"
a1jax_check_int --nodes "$NODES" 1
a1jax_check_int --gpus-per-node "$GPUS" 1
a1jax_check_int --max-restarts "$RESTARTS" 0
a1jax_check_int --grace-period "$GRACE" 1
a1jax_check_int --port "$PORT" 1
[[ -z $PVC ]] || a1jax_check_name --pvc "$PVC"
[[ -z $NAMESPACE ]] || a1jax_check_name --namespace "$NAMESPACE"

yaml_str() {  # a YAML double-quoted scalar (JSON string syntax)
  local s="${1//\\/\\\\}"
  printf '"%s"' "${s//\"/\\\"}"
}
command_yaml="$(for a in a1jax train --config "$EXPERIMENT" --workdir "$WORKDIR" "${EXTRA[@]}"; do
  printf '%s, ' "$(yaml_str "$a")"; done)"
volume_mounts='              - {name: dshm, mountPath: /dev/shm}'
volumes='            - {name: dshm, emptyDir: {medium: Memory}}'  # NCCL needs more shared memory than the default
if [[ -n $PVC ]]; then
  volume_mounts+=$'\n'"              - {name: workdir, mountPath: $(yaml_str "$WORKDIR")}"
  volumes+=$'\n'"            - {name: workdir, persistentVolumeClaim: {claimName: $PVC}}"
fi

jobset="apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: $NAME
spec:
  failurePolicy:
    maxRestarts: $RESTARTS  # all pods restart together and resume from the workdir
  network:
    enableDNSHostnames: true
    subdomain: $NAME
  replicatedJobs:
  - name: workers
    replicas: 1
    template:
      spec:
        parallelism: $NODES
        completions: $NODES
        completionMode: Indexed
        backoffLimit: 0  # one failed pod fails the job, so the JobSet restarts every process
        template:
          spec:
            restartPolicy: Never
            terminationGracePeriodSeconds: $GRACE  # SIGTERM -> the trainer saves a checkpoint
            containers:
            - name: a1jax
              image: $(yaml_str "$IMAGE")
              command: [${command_yaml%, }]
              env:
              - name: A1JAX_COORDINATOR_ADDRESS
                value: \"$NAME-workers-0-0.$NAME:$PORT\"
              - name: A1JAX_NUM_PROCESSES
                value: \"$NODES\"
              - name: A1JAX_PROCESS_ID  # the pod's index, the value Kubernetes also puts in JOB_COMPLETION_INDEX
                valueFrom:
                  fieldRef:
                    fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
              ports:
              - containerPort: $PORT
              resources:
                limits:
                  nvidia.com/gpu: $GPUS
              volumeMounts:
$volume_mounts
            volumes:
$volumes"

KUBECTL=(kubectl apply)
[[ -z $NAMESPACE ]] || KUBECTL+=("--namespace=$NAMESPACE")
KUBECTL+=(-f -)
if ((A1JAX_DRY_RUN)); then
  echo "$(a1jax_quote "${KUBECTL[@]}") <<'A1JAX_JOBSET_EOF'"
  echo "$jobset"
  echo "A1JAX_JOBSET_EOF"
else
  "${KUBECTL[@]}" <<<"$jobset"
fi
