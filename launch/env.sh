# shellcheck shell=bash
# Shared set-up for the launch scripts: a Python 3.12 virtual environment in .venv with a1jax installed.
# Sourced, not run. Respects A1JAX_VENV to use another location.
set -euo pipefail
A1JAX_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
A1JAX_VENV="${A1JAX_VENV:-$A1JAX_ROOT/.venv}"
# Large host buffers on transparent huge pages for every process the launch scripts start, pytest and the report
# included, and tcmalloc preloaded once the venv is set up (a1jax_export_allocator; a1jax/hugepages.py;
# docs/performance.md, "Page faults"). A1JAX_HUGEPAGES=0 leaves the allocator alone.
if [ "${A1JAX_HUGEPAGES:-1}" != 0 ] && [[ ":${GLIBC_TUNABLES:-}:" != *":glibc.malloc.hugetlb=1:"* ]]; then
  export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"
fi

a1jax_find_python312() {
  if command -v python3.12 >/dev/null 2>&1 && python3.12 -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    echo python3.12; return
  fi
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare | grep -E '^3\.12' | sort -rV); do
      echo "$(pyenv root)/versions/$v/bin/python3.12"; return
    done
  fi
  echo "a1jax: Python 3.12 is required (jax 0.12 needs it); install it or put python3.12 on PATH" >&2
  return 1
}

a1jax_apt_install() {  # $1 = package, $2 = what it is for; best effort: root with apt-get only
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  echo "a1jax: installing $1 ($2)" >&2
  if [ -z "${A1JAX_APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null || return 1
    A1JAX_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

a1jax_ensure_bwrap() {  # bubblewrap: the sandbox for model-written code (a1jax/envs/sandbox.py)
  command -v bwrap >/dev/null 2>&1 && return 0
  a1jax_apt_install bubblewrap "the sandbox for model-written code" && return 0
  echo "a1jax: WARNING: no bubblewrap (bwrap); model-written code (engineering domain) will run in the" \
       "best-effort 'subprocess' sandbox. Install the 'bubblewrap' package." >&2
}

a1jax_export_allocator() {  # tcmalloc preloaded where installed, installing it when it can (a1jax/hugepages.py)
  [ "${A1JAX_HUGEPAGES:-1}" != 0 ] && [ "${A1JAX_TCMALLOC:-1}" != 0 ] || return 0
  [ -x "$A1JAX_VENV/bin/python" ] || return 0
  if [ "${A1JAX_TCMALLOC:-1}" = 1 ] && ! grep -qF libtcmalloc_minimal.so.4 <<< "$(ldconfig -p 2>/dev/null)"; then
    a1jax_apt_install libtcmalloc-minimal4 "tcmalloc: the allocator for large buffers" ||
      echo "a1jax: no tcmalloc (package libtcmalloc-minimal4); large buffers use glibc's allocator" >&2
  fi
  eval "$("$A1JAX_VENV/bin/python" "$A1JAX_ROOT/a1jax/hugepages.py" --exports)"
}

a1jax_setup_venv() {  # $1 = extras, e.g. "test"
  local extras="${1:-}" py
  a1jax_ensure_bwrap
  if [ ! -x "$A1JAX_VENV/bin/python" ]; then
    py="$(a1jax_find_python312)"
    "$py" -m venv "$A1JAX_VENV"
    "$A1JAX_VENV/bin/pip" install -q --upgrade pip
  fi
  local spec="$A1JAX_ROOT"
  [ -n "$extras" ] && spec="${A1JAX_ROOT}[$extras]"
  "$A1JAX_VENV/bin/pip" install -q -e "$spec"
  a1jax_export_allocator
}
