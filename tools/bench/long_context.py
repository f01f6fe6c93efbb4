"""Peak memory and time of forward + backward through the log-prob path, against sequence length.

    python tools/bench/long_context.py [--lengths 1024 2048 4096 8192 16384 --chunk-tokens 64 --update-tokens 32768]

A 2-layer Qwen2 (hidden size 64, built from config) with Qwen2.5's real vocabulary, V = 152,064,
tied embeddings, fp32, scores one sequence of T random tokens and back-propagates Σ log π:

    naive   the path k15 had: all [T, V] logits, ``.float()``, gather − logsumexp
    k15     ``k15.logprobs.token_scores``: the head in chunks of ``--chunk-tokens`` positions,
            recomputed in backward (log π and the entropy H)

Each (path, T) runs in a process of its own, so that one's freed memory cannot hide the next
one's peak: peak = the process's high-water resident memory (``ru_maxrss``) − its resident memory
just before the forward; ``peak_over_logits`` = peak / (T·V·4 bytes of fp32 logits). Time per token
is the median of ``--repeats`` forward + backward passes after a warm-up, / T. The naive path is
skipped (null) where its ~4.2× logits would not fit in the memory this machine has free.

Then one RL update (``k15.update.update_policy``, KimiLoss, the same model) of two
``--update-tokens``-token trajectories, one per micro-batch, in its own process, with per-layer
activation checkpointing (``update_32k_peak_gb``) and without.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VOCAB = 152_064
ROOT = Path(__file__).resolve().parents[2]


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":") for line in f)
    return int(fields["MemAvailable"].split()[0]) * 1024


def model():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=65_536,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config)


def naive_logprobs(policy, ids, mask):
    import torch

    logits = policy(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def one_run(path: str, tokens: int, chunk_tokens: int, repeats: int) -> dict:
    """Run in a child process: forward + backward of Σ log π, peak and seconds."""
    import torch

    from k15.logprobs import token_scores

    torch.set_num_threads(2)
    policy = model()
    ids = torch.randint(0, VOCAB, (1, tokens), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)

    def step():
        if path == "naive":
            loss = naive_logprobs(policy, ids, mask).sum()
        else:
            loss = token_scores(policy, ids, mask, 1.0, chunk_tokens).logp.sum()
        loss.backward()
        policy.zero_grad(set_to_none=False)  # gradient buffers stay: part of every step's memory

    before = resident_bytes()
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"peak_bytes": peak, "seconds_per_token": statistics.median(seconds[1:]) / tokens}


def update_run(tokens: int, chunk_tokens: int, checkpointing: int) -> dict:
    """Run in a child process: one update_policy step on trajectories of ``tokens`` tokens."""
    import torch

    from k15.finite import FiniteGuard
    from k15.language_module import checkpoint_decoder_layers
    from k15.losses import KimiLoss
    from k15.reward.rewards import Rewards
    from k15.rollout.batch import Rollout
    from k15.update import update_policy

    torch.set_num_threads(2)
    policy = model()
    if checkpointing:
        checkpoint_decoder_layers(policy)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    ids = torch.randint(0, VOCAB, (2, tokens), generator=torch.Generator().manual_seed(0))
    prompt = 64
    loss_mask = torch.zeros_like(ids, dtype=torch.float32)
    loss_mask[:, prompt:] = 1
    rewards = torch.tensor([[1.0, 0.0]])
    rollout = Rollout(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        loss_mask=loss_mask,
        versions=torch.zeros_like(ids),
        rewards=Rewards(rewards, rewards, {"correct": rewards}, {"correct": ["match", "mismatch"]}),
        completion_lengths=torch.full((2,), tokens - prompt),
        finish_reasons=["stop", "stop"],
        texts=["", ""],
        prompts=[""],
        keys=[None],
        samples_per_prompt=2,
    )
    before = resident_bytes()
    start = time.perf_counter()
    update_policy(
        policy,
        rollout,
        KimiLoss(),
        optimizer,
        None,
        generator=torch.Generator().manual_seed(0),
        guard=FiniteGuard(3),
        max_tokens_per_micro_batch=tokens,  # one trajectory a micro-batch: the 32k-token sequence is the unit
        chunk_tokens=chunk_tokens,
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"peak_bytes": peak, "seconds": time.perf_counter() - start}


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--chunk-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--update-tokens", type=int, default=32_768)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = update_run(*map(int, rest)) if kind == "update" else one_run(kind, *map(int, rest))
        print(json.dumps(result))
        return

    rows = []
    for tokens in args.lengths:
        logits_bytes = tokens * VOCAB * 4
        row = {"tokens": tokens, "logits_gb": round(logits_bytes / 2**30, 3)}
        for path in ("naive", "k15"):
            if path == "naive" and 4.2 * logits_bytes > 0.8 * available_bytes():
                row[path] = None  # would be killed for memory
                continue
            result = child(path, str(tokens), str(args.chunk_tokens), str(args.repeats))
            if "error" in result:
                row[path] = result
                continue
            row[path] = {
                "peak_gb": round(result["peak_bytes"] / 2**30, 3),
                "peak_over_logits": round(result["peak_bytes"] / logits_bytes, 3),
                "us_per_token": round(result["seconds_per_token"] * 1e6, 1),
            }
        if row["naive"] and row["k15"] and "error" not in row["naive"] and "error" not in row["k15"]:
            row["time_ratio"] = round(row["k15"]["us_per_token"] / row["naive"]["us_per_token"], 3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    at_4k = next((r for r in rows if r["tokens"] == 4096), None)
    update = child("update", str(args.update_tokens), str(args.chunk_tokens), "1")
    plain = child("update", str(args.update_tokens), str(args.chunk_tokens), "0")
    print(
        json.dumps(
            {
                "peak_over_logits": at_4k and at_4k["k15"] and at_4k["k15"].get("peak_over_logits"),
                "naive_peak_over_logits": at_4k and at_4k["naive"] and at_4k["naive"].get("peak_over_logits"),
                "time_ratio_4k": at_4k and at_4k.get("time_ratio"),
                "update_32k_peak_gb": round(update["peak_bytes"] / 2**30, 2) if "peak_bytes" in update else update,
                "update_32k_seconds": round(update["seconds"], 1) if "seconds" in update else None,
                "update_32k_peak_gb_without_checkpointing": round(plain["peak_bytes"] / 2**30, 2)
                if "peak_bytes" in plain
                else plain,
                "update_32k_seconds_without_checkpointing": round(plain["seconds"], 1) if "seconds" in plain else None,
                "chunk_tokens": args.chunk_tokens,
                "vocab": VOCAB,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
