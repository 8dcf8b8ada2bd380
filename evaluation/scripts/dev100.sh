#!/usr/bin/env bash
# The whole GSM8K dev slice (100) for deciding: bundled SLM alone, then round 2 (commands as no-ops).
# Resumable: rerun to continue (copy runs/eval/gsm8k-dev-40-noop to runs/eval/gsm8k-dev-100-noop first to reuse its 40 rows).
set -eu
cd "$(dirname "$0")/../.." && source .venv/bin/activate
COMMON="--benchmark gsm8k --slice dev --limit 100 --max-new-tokens 640"
relay eval run $COMMON --policies never --out runs/eval/gsm8k-dev-100-base
relay eval run $COMMON --policies never,learned@4 --out runs/eval/gsm8k-dev-100-noop --set models.pair=qwen2.5-coder-relay-1.5b
relay eval report runs/eval/gsm8k-dev-100-noop --baseline runs/eval/gsm8k-dev-100-base
