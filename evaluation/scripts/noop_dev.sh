#!/usr/bin/env bash
# Round 2 (the shipped adapter) with unserved commands as no-ops (the new default), first 40 dev problems.
set -eu
cd "$(dirname "$0")/../.." && source .venv/bin/activate
COMMON="--benchmark gsm8k --slice dev --limit 40 --max-new-tokens 640 --out runs/eval/gsm8k-dev-40-noop --set models.pair=qwen2.5-coder-relay-1.5b"
relay eval run $COMMON --policies never
relay eval run $COMMON --policies never,learned@4
