#!/usr/bin/env bash
# The test command from the README: sets up both environments if needed, then runs pytest.
#   .venv         Python 3.12, jax 0.12, a1jax[test,tpu-aot]
#   .venv-oracle  Python 3.11, torch 2.13.0 (CPU) and transformers: the HF reference oracle for parity tests
# Extra arguments go to pytest, e.g. `bash launch/test.sh tests/test_model.py -k parity`.
# shellcheck source=launch/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
a1jax_setup_venv test,tpu-aot  # tpu-aot: libtpu, for the TPU ahead-of-time plan test (tests/test_plan_tpu.py)
bash "$A1JAX_ROOT/tests/oracle/setup_oracle.sh"
cd "$A1JAX_ROOT" || exit
exec "$A1JAX_VENV/bin/python" -m pytest -n "${A1JAX_TEST_WORKERS:-2}" "$@"
