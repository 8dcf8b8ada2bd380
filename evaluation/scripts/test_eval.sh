#!/usr/bin/env bash
# GSM8K test slice, problems 21-120 (the first 20 were reported before): trained SLM, then bundled.
set -u
cd "$(dirname "$0")/../.." && source .venv/bin/activate
COMMON="--benchmark gsm8k --slice test --skip 20 --limit 100 --max-new-tokens 640"
relay eval run $COMMON --policies learned@4,random-token,never --out runs/eval/gsm8k-test-100-relay \
  --set models.pair=qwen2.5-coder-relay-1.5b
relay eval run $COMMON --policies never,entropy@0.3,cloud-only --out runs/eval/gsm8k-test-100-base
