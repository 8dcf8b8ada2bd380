#!/usr/bin/env bash
# Round-3 warm-up SFT (from the base SLM, windowed, lr 2e-4): ship it, then the first 40 GSM8K dev problems.
set -eu
cd "$(dirname "$0")/../.." && source .venv/bin/activate
while [ ! -d runs/train-cpu/round3/sft/final ]; do sleep 30; done
relay train ship --recipe cpu --adapter runs/train-cpu/round3/sft/final > runs/train-cpu/ship-round3.log 2>&1
MERGED=$(grep '^merged:' runs/train-cpu/ship-round3.log | cut -d' ' -f2)
COMMON="--benchmark gsm8k --slice dev --limit 40 --max-new-tokens 640 --out runs/eval/gsm8k-dev-40-round3"
relay eval run $COMMON --policies never --set models.slm=$MERGED
relay eval run $COMMON --policies never,learned@4,random-token --set models.slm=$MERGED
