#!/usr/bin/env bash
# The prefix engine at the seed field note's 6,287-token system prompt on a lent GPU (issue 28), in under 2 minutes
# on an H200: bench/prefix_cache.py --preset gpu-3b (Qwen2.5-3B shape, random init, bf16) — re-encoding vs
# generate + deep-copied cache vs the engine, the engine batched, the pairs stage's sampling rate, memory per turn.
#
#   bash bench/gpu_check.sh prepare      # HERE, once: the wheels the device image lacks (pydantic for gpu/) into .whl/
#   bash bench/gpu_prefix.sh run         # THERE (device tool: carry [".whl"], timeout_s 300)
#   bash bench/gpu_prefix.sh dry-run DIR # anywhere: the same Python on a tiny shape on the CPU
#
# No Prefect is imported (the JSON records `imported_prefect`); results: $OUT/prefix_cache_gpu.json and the log.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  run)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
    nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv || true
    timeout 240 python3 bench/prefix_cache.py --preset gpu-3b --out "${OUT:?set OUT to the folder that comes back}/prefix_cache_gpu.json"
    ;;
  dry-run)
    python3 bench/prefix_cache.py --dry-run --out "${2:?dry-run needs an output folder}/prefix_cache_dry.json"
    ;;
  *)
    echo "usage: bench/gpu_prefix.sh run | dry-run DIR" >&2
    exit 2
    ;;
esac
