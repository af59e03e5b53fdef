# shellcheck shell=bash
# Helpers shared by the launchers (local.sh, tpu_vm.sh, xpk.sh, slurm.sh, jobset.sh). Sourced, not run.
#
# Every launcher builds each command as a bash array and hands it to `a1jax_run`: with --dry-run the array is
# printed as one shell-quoted line, otherwise it is executed. So the dry-run output is exactly what would run, and
# pasting it into a shell runs it.
# shellcheck source=launch/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
A1JAX_PROG="launch/$(basename "$0")"
A1JAX_DRY_RUN=0

# Arguments -> one line that a POSIX shell reads back as the same arguments.
a1jax_quote() {
  local out=() a q="'"
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+=("$a")
    else
      out+=("'${a//$q/$q\\$q$q}'")
    fi
  done
  printf '%s\n' "${out[*]}"
}

# Runs a command, or prints it under --dry-run.
a1jax_run() {
  if ((A1JAX_DRY_RUN)); then
    a1jax_quote "$@"
  else
    "$@"
  fi
}

# Errors name the flag and what was expected; exit status 2 like argparse.
a1jax_die() {
  echo "$A1JAX_PROG: error: $*" >&2
  echo "Try '$A1JAX_PROG --help'." >&2
  exit 2
}

# --help: the script's leading comment block (after the shebang), without the '# '.
a1jax_help() {
  sed -n '2,/^[^#]/p' "$0" | grep '^#' | grep -v '^# shellcheck' | sed -e 's/^# \{0,1\}//'
  exit 0
}

# Usage: a1jax_need_value "$@" - the current flag ($1) must be followed by a value ($2).
a1jax_need_value() {
  [[ $# -ge 2 ]] || a1jax_die "$1 needs a value"
}

a1jax_check_int() {  # FLAG VALUE MIN
  if [[ ! $2 =~ ^[0-9]+$ ]] || (($2 < $3)); then a1jax_die "$1 must be an integer >= $3, got '$2'"; fi
}

a1jax_check_name() {  # FLAG VALUE: a DNS-1035 label (TPU VMs, GKE workloads, JobSets, SLURM job names alike)
  [[ $2 =~ ^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$ ]] ||
    a1jax_die "$1 must be lowercase letters, digits and '-', start with a letter, at most 40 characters; got '$2'"
}

a1jax_check_experiment() {  # FLAG VALUE: experiments/FILE.py[:ARG], relative to the repository root or absolute
  local path="${2%%:*}"
  [[ $path == *.py ]] || a1jax_die "$1 must look like experiments/FILE.py[:ARG], got '$2'"
  [[ -f $path || -f $A1JAX_ROOT/$path ]] || a1jax_die "$1 $2: no such experiment file '$path'"
}

a1jax_check_workdir() {  # FLAG VALUE: a path, or a gs:// URL (a1jax/storage.py); other object stores are refused
  [[ -n $2 ]] || a1jax_die "$1 is required"
  if [[ $2 == gs://* && ! $2 =~ ^gs://[a-z0-9][-_.a-z0-9]{1,61}[a-z0-9](/.*)?$ ]]; then
    a1jax_die "$1 $2: not a gs://BUCKET[/DIR] URL (a bucket name is 3-63 lowercase letters, digits, '-', '_', '.')"
  elif [[ $2 == *://* && $2 != gs://* ]]; then
    a1jax_die "$1 $2: the object store a1jax writes to is Google Cloud Storage, as gs://BUCKET[/DIR]; or give a" \
      "path (a local one on a single host, a shared mount for several)"
  fi
}

a1jax_log_dir() {  # WORKDIR FALLBACK: where a launcher's per-process logs go. The shell appends to them, which object
  # storage cannot do, so a gs:// workdir keeps them in FALLBACK on each host instead of WORKDIR/logs
  if [[ $1 == gs://* ]]; then echo "$2"; else echo "$1/logs"; fi
}
