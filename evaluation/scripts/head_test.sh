#!/usr/bin/env bash
# The call head on GSM8K test problems 21-120 (the README's test slice): head@0.05 (chosen on dev),
# then the token-level random controller at the share head@0.05 measured. The bundled SLM's `never`,
# `entropy@0.3` and `cloud-only` rows on the same problems are in runs/eval/gsm8k-test-100-base.
# Resumable: rerun to continue.
set -eu
cd "$(dirname "$0")/../.." && source .venv/bin/activate
OUT=runs/eval/gsm8k-test-100-head
relay eval run --benchmark gsm8k --slice test --skip 20 --limit 100 --max-new-tokens 640 --out "$OUT" \
  --set models.call_head="${HEAD:-models/heads/qwen2.5-coder-0.5b-1.5b.npz}" --policies "${POLICIES:-head@0.05,random-token}"
relay eval report "$OUT" --baseline runs/eval/gsm8k-test-100-base
