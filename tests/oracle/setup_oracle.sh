#!/usr/bin/env bash
# Creates .venv-oracle: Python 3.11 + torch 2.13.0 (the local CPU wheel) + transformers, the reference for parity tests.
# torch 2.13.0 CPU exists here only for Python 3.11, and a 3.12 venv would download a multi-GB CUDA build instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${A1JAX_ORACLE_VENV:-$ROOT/.venv-oracle}"
# The oracle's numbers are those of these exact versions (docs/spec/model.md §9 lists what changed between releases).
CHECK='import torch, transformers; assert torch.__version__.split("+")[0] == "2.13.0" and transformers.__version__ == "5.24.0"'
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then exit 0; fi
PY=""
for cand in python3.11 "$(command -v pyenv >/dev/null 2>&1 && echo "$(pyenv root)/versions/3.11.7/bin/python3.11")"; do
  if [ -n "$cand" ] && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then PY="$cand"; break; fi
done
[ -n "$PY" ] || { echo "setup_oracle: Python 3.11 not found; parity tests need it" >&2; exit 1; }
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q "torch==2.13.0" "transformers==5.24.0" numpy
"$VENV/bin/python" -c "$CHECK" || { echo "setup_oracle: $VENV does not have torch 2.13.0 + transformers 5.24.0" >&2; exit 1; }
