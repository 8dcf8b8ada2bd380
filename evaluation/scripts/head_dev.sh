#!/usr/bin/env bash
# Round 5: the call head beside the bundled SLM on the first 40 dev problems. The bundled SLM's
# `never` and `entropy@0.3` rows on the same problems are in runs/eval/gsm8k-dev-40-base (README).
# Resumable: rerun to continue. POLICIES and HEAD override the defaults.
set -eu
cd "$(dirname "$0")/../.." && source .venv/bin/activate
HEAD="${HEAD:-runs/train-cpu/head/call_head.npz}"
OUT=runs/eval/gsm8k-dev-40-head
relay eval run --benchmark gsm8k --slice dev --limit 40 --max-new-tokens 640 --out "$OUT" \
  --set models.call_head="$HEAD" --policies "${POLICIES:-head@0.15}"
relay eval report "$OUT" --baseline runs/eval/gsm8k-dev-40-base
