#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a lent GPU machine (run from the repository
# root after `bash setup.sh`, which installs the CUDA vllm package where nvidia-smi answers):
#   bash tools/gpu_check.sh
# Prints the tests' summary (every `gpu`-marked test skips on a machine without CUDA), then the
# long-CoT recipe's JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print(torch.cuda.get_device_name())"
.venv/bin/python -m pytest -q -m gpu -p no:cacheprovider
# The real recipe on this GPU: conf/long_cot.yaml at 32k tokens, 2 iterations, a random 0.5B
# Qwen2.5-shaped policy; one JSON line (peak memory vs the plan, rollout tokens/s, sync and
# iteration seconds).
.venv/bin/python tools/gpu_long_cot.py
