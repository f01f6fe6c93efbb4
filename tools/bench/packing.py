"""Packed vs padded micro-batches: trained tokens/s and peak memory of one policy update.

    python tools/bench/packing.py [--repeats 5 --threads 2]

The batch is ``tools/bench/partial.py``'s long-tailed one: 16 prompts × 8 samples of carry-chain
addition, 85% with 1–5 digit operands and 15% with 8–16, each trajectory the prompt plus a
teacher trace (capped at 192 new tokens), in the tiny recipe's model (``conf/tiny_sft.yaml``'s
shape: hidden 128, 4 layers, character vocabulary). One update = one pass, one optimizer step
over all 128 trajectories (k1.5 loss, AdamW), as ``conf/tiny.yaml`` runs it.

Variants, each in its own process (ru_maxrss − resident memory before = its peak):
* ``packed_<B>``: k15 now — micro-batches of ≤ B real tokens, packed into one row;
* ``padded_bucketed_<B>``: k15 before packing — length-sorted micro-batches of ≤ B padded tokens
  (rows × longest row), each right-padded (the path this replaced, reproduced here);
* ``padded_one_block``: every row in one right-padded forward (what most RL trainers do).

``packed_speedup`` = tokens/s of ``packed_4096`` (the tiny recipe's budget) / ``padded_one_block``;
``packed_speedup_vs_bucketed`` the same against ``padded_bucketed_4096``. One final JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time

SAMPLES, PROMPTS, MAX_NEW_TOKENS = 8, 16, 192
ALPHABET = "0123456789+=,:AQ"


def long_tailed_rollout():
    import torch

    from k15.data.arithmetic import sample_problem, teacher_solution
    from k15.models import TinyQwen2
    from k15.reward.rewards import Rewards
    from k15.rollout.batch import Rollout

    sys.path.insert(0, "tools/bench")
    from partial import LONG, LONG_SHARE, SHORT

    rng = random.Random(1)
    tokenizer = TinyQwen2(ALPHABET).tokenizer()
    rows, prompt_lengths = [], []
    for _ in range(PROMPTS):
        problem = sample_problem(rng, rng.choice(LONG if rng.random() < LONG_SHARE else SHORT))
        prompt = tokenizer(problem.prompt)["input_ids"]
        for _ in range(SAMPLES):
            trace = tokenizer(teacher_solution(problem, rng)[0], add_special_tokens=False)["input_ids"]
            rows.append(prompt + trace[:MAX_NEW_TOKENS])
            prompt_lengths.append(len(prompt))
    width = max(map(len, rows))
    input_ids, attention_mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width)
    loss_mask = torch.zeros(len(rows), width)
    for n, row in enumerate(rows):
        input_ids[n, : len(row)] = torch.tensor(row)
        attention_mask[n, : len(row)] = 1
        loss_mask[n, prompt_lengths[n] : len(row)] = 1
    rewards = (torch.rand(PROMPTS, SAMPLES, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask.long(),
        loss_mask=loss_mask,
        versions=torch.zeros_like(input_ids),
        rewards=Rewards(total=rewards, correct=rewards, parts={}, reasons={}),
        completion_lengths=(loss_mask.sum(1)).long(),
        finish_reasons=["stop"] * len(rows),
        texts=[""] * len(rows),
        prompts=[""] * PROMPTS,
        keys=[None] * PROMPTS,
        samples_per_prompt=SAMPLES,
    )


def padded_scores(model, input_ids, attention_mask, temperature=1.0, chunk_tokens=1024, **model_inputs):
    """The padded path packing replaced: right-padded rows through the model as they are."""
    from k15.logprobs import ChunkedHeadScores, TokenScores

    hidden = model(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=True, logits_to_keep=1
    ).hidden_states[-1]
    scored = attention_mask[:, 1:].bool()
    head = model.get_output_embeddings()
    logp, entropy = ChunkedHeadScores.apply(
        hidden[:, :-1][scored], head.weight, head.bias, input_ids[:, 1:][scored], temperature, chunk_tokens
    )

    def placed(values):
        full = values.new_zeros(input_ids.shape)
        full[:, 1:][scored] = values
        return full

    return TokenScores(placed(logp), placed(entropy))


def padded_buckets(lengths, rows, max_tokens):
    """Length-sorted micro-batches of ≤ ``max_tokens`` padded tokens (rows × longest row)."""
    if max_tokens is None:
        return [rows]
    order = rows[lengths[rows].argsort(descending=True, stable=True)]
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or int(lengths[order[start]]) * (end + 1 - start) > max_tokens:
            batches.append(order[start:end])
            start = end
    return batches


def one_run(variant: str, repeats: int, threads: int) -> dict:
    import torch

    import k15.update
    from k15.finite import FiniteGuard
    from k15.losses import KimiLoss
    from k15.models import TinyQwen2

    torch.set_num_threads(threads)
    kind, _, budget = variant.rpartition("_")
    budget = None if budget == "block" else int(budget)
    if kind.startswith("padded"):
        k15.update.token_scores = padded_scores
        k15.update.token_budget_micro_batches = padded_buckets
    rollout = long_tailed_rollout()
    model = TinyQwen2(ALPHABET, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=256)
    model = model.model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = []
    for _ in range(repeats + 1):  # the first warms up
        start = time.perf_counter()
        k15.update.update_policy(
            model,
            rollout,
            KimiLoss(0.5),
            optimizer,
            None,
            generator=torch.Generator().manual_seed(0),
            guard=FiniteGuard(3),
            max_tokens_per_micro_batch=budget,
        )
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    tokens = int(rollout.attention_mask.sum())
    median = statistics.median(seconds[1:])
    return {
        "tokens": tokens,
        "padded_tokens": rollout.input_ids.numel(),
        "seconds": round(median, 4),
        "tokens_per_s": round(tokens / median),
        "peak_mb_over_first_update": round(peak / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run", help=argparse.SUPPRESS)  # one variant, in a child process
    args = parser.parse_args()
    if args.run:
        print(json.dumps(one_run(args.run, args.repeats, args.threads)))
        return
    variants = ["packed_1024", "packed_2048", "packed_4096", "padded_bucketed_4096", "padded_one_block"]
    results = {}
    for variant in variants:
        out = subprocess.run(
            [sys.executable, __file__, "--run", variant, f"--repeats={args.repeats}", f"--threads={args.threads}"],
            capture_output=True,
            text=True,
            check=True,
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(variant, results[variant], file=sys.stderr)
    speed = {name: r["tokens_per_s"] for name, r in results.items()}
    print(
        json.dumps(
            {
                "packed_speedup": round(speed["packed_4096"] / speed["padded_one_block"], 2),
                "packed_speedup_vs_bucketed": round(speed["packed_4096"] / speed["padded_bucketed_4096"], 2),
                "real_tokens": results["packed_4096"]["tokens"],
                "padded_tokens": results["packed_4096"]["padded_tokens"],
                "variants": results,
            }
        )
    )


if __name__ == "__main__":
    main()
