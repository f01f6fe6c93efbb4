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
# DeepSpeed ZeRO-3 through Lightning's DeepSpeedStrategy, which runs on CUDA only (tests/test_deepspeed.py
# runs DeepSpeed's own CPU engine instead): the tiny recipe with conf/strategy/deepspeed_zero3.yaml over
# a random tiny Qwen2 with every tensor partitioned (threshold 0), 2 iterations in bf16 with the vLLM sync
# from the partitions, then the export checked for full tensors.
zero3=$(mktemp -d)
.venv/bin/python - "$zero3/policy" <<'PY'
import sys
from k15.data.arithmetic import ALPHABET
from k15.models import TinyQwen2
source = TinyQwen2(ALPHABET, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)
source.model().save_pretrained(sys.argv[1])
source.tokenizer().save_pretrained(sys.argv[1])
PY
.venv/bin/python -m k15 fit -c conf/tiny.yaml -c conf/strategy/deepspeed_zero3.yaml \
  --trainer.accelerator=gpu --trainer.devices=1 --trainer.strategy.init_args.bf16=true \
  --trainer.strategy.init_args.param_persistence_threshold=0 \
  --model.init_args.model.init_args.path="$zero3/policy" \
  --data.init_args.iterations=2 --data.init_args.prompts_per_iteration=4 --data.init_args.heldout_prompts=8 \
  --trainer.val_check_interval=2 --trainer.logger.init_args.save_dir="$zero3/runs" \
  --trainer.callbacks="[{class_path: k15.export.ExportPretrained, init_args: {dirpath: $zero3/hf}}, k15.summary.RunSummary]"
.venv/bin/python - "$zero3/hf" <<'PY'
import sys
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM
expected = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(sys.argv[1])).state_dict()
exported = load_file(f"{sys.argv[1]}/model.safetensors")
wrong = [name for name, tensor in exported.items() if tensor.shape != expected[name].shape]
assert not wrong, f"the ZeRO-3 export wrote partitions, not full tensors: {wrong[:3]}"
print("zero3: trained and exported full weights")
PY
# Off-policy weights where they matter: a bf16 CUDA vLLM engine sampling for the fp32 trainer (the
# rollout/trainer mismatch TIS and IcePop correct; the CPU engine runs fp32 and matches to ~1e-7).
# The engine's log-probs at τ ≠ 1 first, then the tiny recipe with partial rollouts and TIS for 4
# iterations; prints the weights' mean and the share truncated, and the engine/trainer mismatch.
.venv/bin/python -m pytest -q tests/test_vllm.py -k tempered -p no:cacheprovider
tis=$(mktemp -d)
.venv/bin/python -m k15 fit -c conf/tiny.yaml -c conf/rollout/partial.yaml -c conf/off_policy/tis.yaml \
  --model.init_args.model.init_args.path="$zero3/policy" \
  --model.init_args.rollout.init_args.engine.init_args.vllm="{dtype: bfloat16, max_model_len: 256, kv_cache_gib: 0.25}" \
  --data.init_args.iterations=4 --data.init_args.heldout_prompts=8 --trainer.val_check_interval=4 \
  --trainer.logger.init_args.save_dir="$tis/runs" --trainer.callbacks="[k15.summary.RunSummary]"
.venv/bin/python - "$tis/runs/tiny/version_0" <<'PY'
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = EventAccumulator(sys.argv[1])
events.Reload()
tags = ("train/is_weight_mean", "train/is_clipped_share", "rollout/engine_logp_abs_diff")
print({tag: [round(e.value, 5) for e in events.Scalars(tag)] for tag in tags})
PY
