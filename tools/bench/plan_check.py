"""Does ``python -m k15 plan`` predict the trainer's peak memory? Measured against predicted, on a CPU.

    python tools/bench/plan_check.py [--cases v152k_8k v152k_8k_ckpt ...]

Each case is one RL update step (``k15.update.update_policy``, KimiLoss: forward + backward +
AdamW step) in a process of its own, measured as ``tools/bench/long_context.py`` measures:
peak = the process's high-water resident memory (``ru_maxrss``) − its resident memory just
before the model is built (after the imports), so the weights count, as they do in the plan.
The optimizer state is created before the measured step (a step on zero gradients), as it is
alive during every update after an iteration's first step; the plan counts it.

Cases, all fp32 (CPU), where something real dominates the trainer's memory:
    v152k_*     a 2-layer Qwen2, hidden 64, with Qwen2.5's real 152,064-token vocabulary (tied),
                one trajectory of 8k tokens (log-prob chunks of 1,024: the head's [chunk, V]
                buffers dominate) or 32k tokens (chunks of 64: the activations dominate), with
                per-layer activation checkpointing (``_ckpt``) and without
    tiny_yaml   conf/tiny.yaml's own model and micro-batch: 16 trajectories × 256 tokens packed
                into its 4,096-token budget

The prediction is ``k15.memory.breakdown(setup)["trainer_update_peak"]`` (the trainer alone: the
colocated vLLM engine is not built here). Each case is measured twice: with glibc's default
allocator, whose mmap threshold rises after the first large free (up to 32 MiB), so the many
tensors of a few MiB then come from a fragmenting heap that resident memory never gives back;
and with ``MALLOC_MMAP_THRESHOLD_=65536`` (``_fixed_mmap``), where every tensor over 64 KiB is a
mapping of its own, returned when freed: closer to the tensor bytes alive, which is what the plan
counts. Prints one JSON line per case to stderr, then one JSON line with every case's predicted
and measured GiB and their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from k15.cli import parsed_config  # noqa: E402
from k15.memory import GIB, Setup, Shape, breakdown  # noqa: E402
from k15.plan import get, read_setup  # noqa: E402

VOCAB = 152_064
WIDE = Shape(vocab=VOCAB, hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32, intermediate=128, max_positions=65_536)


def tiny_yaml_setup() -> Setup:
    """conf/tiny.yaml as planned; its model (runs/tiny_sft/hf) is conf/tiny_sft.yaml's TinyQwen2 if not yet trained."""
    overrides = []
    if not (ROOT / "runs/tiny_sft/hf/config.json").is_file():
        sft = parsed_config(["-c", str(ROOT / "conf/tiny_sft.yaml")])
        overrides = [f"--model.init_args.model={json.dumps(get(sft, 'model.init_args.model'))}"]
    setup, _ = read_setup(parsed_config(["-c", str(ROOT / "conf/tiny.yaml"), *overrides]))
    return setup


def cases() -> dict[str, Setup]:
    wide = Setup(shape=WIDE, context=8192, gpu=False, chunk_tokens=1024, micro_batch_tokens=8192, rows=1)
    long = replace(wide, context=32_768, chunk_tokens=64, micro_batch_tokens=32_768)
    return {
        "v152k_8k": wide,
        "v152k_8k_ckpt": replace(wide, checkpointing=True),
        "v152k_32k_chunk64": long,
        "v152k_32k_chunk64_ckpt": replace(long, checkpointing=True),
        "tiny_yaml": tiny_yaml_setup(),
    }


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(setup: dict) -> dict:
    """In a child process: one update step of the setup's micro-batch; peak bytes over the start."""
    import time

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from k15.finite import FiniteGuard
    from k15.language_module import checkpoint_decoder_layers
    from k15.losses import KimiLoss
    from k15.reward.rewards import Rewards
    from k15.rollout.batch import Rollout
    from k15.update import update_policy

    torch.set_num_threads(2)
    s = setup["shape"]
    config = Qwen2Config(
        vocab_size=s["vocab"],
        hidden_size=s["hidden"],
        intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        max_position_embeddings=max(s["max_positions"], setup["context"]),
        tie_word_embeddings=s["tied"],
    )
    tokens, budget = setup["context"], setup["micro_batch_tokens"]
    rows = max(1, budget // tokens)
    ids = torch.randint(0, s["vocab"], (rows, tokens), generator=torch.Generator().manual_seed(0))
    loss_mask = torch.zeros_like(ids, dtype=torch.float32)
    loss_mask[:, min(16, tokens // 2) :] = 1
    k = 8 if rows % 8 == 0 else 1
    rewards = torch.arange(rows, dtype=torch.float32).remainder(2).reshape(rows // k, k)
    rollout = Rollout(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        loss_mask=loss_mask,
        versions=torch.zeros_like(ids),
        rewards=Rewards(rewards, rewards, {"correct": rewards}, {"correct": ["match"] * rows}),
        completion_lengths=loss_mask.sum(dim=1).long(),
        finish_reasons=["stop"] * rows,
        texts=[""] * rows,
        prompts=[""] * (rows // k),
        keys=[None] * (rows // k),
        samples_per_prompt=k,
    )
    before = resident_bytes()
    torch.manual_seed(0)
    policy = Qwen2ForCausalLM(config).train()
    if setup["checkpointing"]:
        checkpoint_decoder_layers(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    for p in policy.parameters():  # the optimizer's state, as after the first step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    update_policy(
        policy,
        rollout,
        KimiLoss(),
        optimizer,
        None,
        generator=torch.Generator().manual_seed(0),
        guard=FiniteGuard(3),
        reset_optimizer=False,
        max_tokens_per_micro_batch=budget,
        chunk_tokens=setup["chunk_tokens"],
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"peak_bytes": peak, "seconds": time.perf_counter() - start}


def child(setup: Setup, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(asdict(setup))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | env,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"rc {out.returncode}"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", help="a subset of the cases, by name")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    results = {}
    for name, setup in cases().items():
        if args.cases and name not in args.cases:
            continue
        plan = breakdown(setup)
        predicted = plan["trainer_update_peak"]
        results[name] = {"predicted_gib": round(predicted / GIB, 3)}
        for suffix, env in (("", {}), ("_fixed_mmap", {"MALLOC_MMAP_THRESHOLD_": "65536"})):
            measured = child(setup, env)
            if "error" in measured:
                results[name]["error" + suffix] = measured["error"]
                continue
            results[name]["measured_gib" + suffix] = round(measured["peak_bytes"] / GIB, 3)
            results[name]["ratio" + suffix] = round(measured["peak_bytes"] / predicted, 3)
        results[name] |= {"peak_transient": plan["peak_transient"], "tokens": plan["tokens_per_gpu"]}
        print(json.dumps({name: results[name]}), file=sys.stderr)
    within = {
        suffix: all(0.8 <= r.get("ratio" + suffix, 0) <= 1.2 for r in results.values())
        for suffix in ("", "_fixed_mmap")
    }
    print(
        json.dumps(
            {"cases": results, "within_20_percent": within[""], "within_20_percent_fixed_mmap": within["_fixed_mmap"]}
        )
    )


if __name__ == "__main__":
    main()
