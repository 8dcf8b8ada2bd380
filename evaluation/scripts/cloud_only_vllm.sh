#!/usr/bin/env bash
# The LLM-only row of the GSM8K test run (problems 21-120) on a vLLM cloud with 4 workers
# (the step engine would take ~2.5 h on this CPU). Same settings key as the rest of the run.
set -u
cd "$(dirname "$0")/../.."
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-3}

.venv-vllm/bin/python -m relaycli.main cloud serve --engine vllm --host 127.0.0.1 --port 50061 --llm qwen2.5-coder-1.5b-instruct \
  > runs/eval/vllm-cloud.log 2>&1 &
CLOUD=$!
trap 'kill $CLOUD' EXIT
until .venv/bin/relay cloud health --address 127.0.0.1:50061 --timeout 2 >/dev/null 2>&1; do
  kill -0 $CLOUD 2>/dev/null || { echo "the vLLM cloud died (runs/eval/vllm-cloud.log)"; exit 1; }
  sleep 5
done
.venv/bin/relay eval run --benchmark gsm8k --slice test --skip 20 --limit 100 --max-new-tokens 640 \
  --policies cloud-only --out runs/eval/gsm8k-test-100-base --workers 4 --set cloud.address=127.0.0.1:50061
