#!/usr/bin/env bash
# Rebuilds the quickstart trajectories in this folder from the project's shared data (../shared/data/agentic next
# to the repository), with the a1jax importers. Deterministic: the same inputs give byte-identical files.
#   bash data/quickstart/build.sh
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SHARED="${A1JAX_SHARED_DATA:-$ROOT/../shared/data}/agentic"
A1JAX="${A1JAX:-$ROOT/.venv/bin/a1jax}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$A1JAX" data import --format tau_bench "$SHARED/tau_bench/gpt-4o-airline.json" --limit 80 \
  --domain customer_service --out "$TMP/tau_bench_airline.jsonl"
"$A1JAX" data import --format toolbench "$SHARED/toolbench/answer" --domain general_agentic --out "$TMP/toolbench.jsonl"
"$A1JAX" data import --format swe_agent "$SHARED/swe_agent" --domain engineering --out "$TMP/swe_agent.jsonl"

"$A1JAX" data split "$TMP/tau_bench_airline.jsonl" --heldout 4 --group-by metadata.task_id --seed 0 \
  --train-out "$HERE/tau_bench_airline.jsonl" --heldout-out "$TMP/heldout_tau.jsonl"
"$A1JAX" data split "$TMP/toolbench.jsonl" --heldout 1 --seed 0 \
  --train-out "$HERE/toolbench.jsonl" --heldout-out "$TMP/heldout_toolbench.jsonl"
"$A1JAX" data split "$TMP/swe_agent.jsonl" --heldout 2 --seed 0 \
  --train-out "$HERE/swe_agent.jsonl" --heldout-out "$TMP/heldout_swe.jsonl"
cat "$TMP/heldout_tau.jsonl" "$TMP/heldout_toolbench.jsonl" "$TMP/heldout_swe.jsonl" > "$HERE/heldout.jsonl"
