"""Reward models as judges: agreement with the rule verifier, and judging throughput.

    python tools/bench/reward_models.py [--scalar runs/rm_scalar/hf --generative runs/rm_generative/hf
                                         --policy runs/tiny_sft/hf --batch 128 --repeats 3]

Run conf/tiny_rm_scalar.yaml and conf/tiny_rm_generative.yaml first. Each judge (the rule
``FinalAnswerMatch("A:")``, the scalar RM, the GenRM) judges:

    heldout   the held-out judging records (shards/rm; questions unseen in training): accuracy =
              agreement with the rule's label, per response kind; the majority-class baseline;
              the scalar RM's AUC; the GenRM's invalid-verdict rate
    policy    (with --policy) responses the tiny SFT policy samples (temperature 1, k = 8) for
              held-out addition prompts — the distribution an RL run judges: agreement with the rule
    speed     judgements/s on one batch of --batch held-out records (median of --repeats, after a warm-up)

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from timing import median_seconds
from torchmetrics.functional.classification import binary_auroc

from k15.data.shards import read_records, shard_urls
from k15.generation import Request, Sampling, hf_sample
from k15.models import Pretrained
from k15.reward.answer import FinalAnswerMatch, Verifier
from k15.reward.generative_rm import GenerativeRM
from k15.reward.scalar_rm import ScalarRM

ROOT = Path(__file__).resolve().parents[2]


def agreement(judge: Verifier, rows: list[dict]) -> dict:
    """Share of rows where ``judge`` agrees with the label, overall and per kind; invalid share."""
    start = time.perf_counter()
    verdicts = judge.judge_many(
        [r["question"] for r in rows], [r["response"] for r in rows], [r["reference"] for r in rows]
    )
    seconds = time.perf_counter() - start
    by_kind = defaultdict(list)
    for r, v in zip(rows, verdicts, strict=True):
        by_kind[r.get("kind", "all")].append(v.correct == r["correct"])
    agree = [v.correct == r["correct"] for r, v in zip(rows, verdicts, strict=True)]
    return {
        "accuracy": round(sum(agree) / len(agree), 4),
        "by_kind": {kind: round(sum(a) / len(a), 4) for kind, a in sorted(by_kind.items())},
        "invalid_rate": round(sum(v.reason == "invalid" for v in verdicts) / len(verdicts), 4),
        "seconds": round(seconds, 2),
    }


def policy_rows(path: str, prompts: int, k: int, seed: int) -> list[dict]:
    """``prompts`` held-out addition prompts × ``k`` samples of the policy at ``path``, labelled by the rule."""
    source = Pretrained(path)
    tokenizer, model = source.tokenizer(), source.model()
    records = list(itertools.islice(read_records(shard_urls(str(ROOT / "shards/addition/heldout-*.tar.gz"))), prompts))
    requests = [Request(tokenizer(r["prompt"])["input_ids"], k, 64) for r in records]
    samples = hf_sample(model, requests, Sampling(temperature=1.0, seed=seed))
    rule = FinalAnswerMatch("A:")
    rows = []
    for record, group in zip(records, samples, strict=True):
        for completion in tokenizer.batch_decode([c.token_ids for c in group], skip_special_tokens=True):
            rows.append(
                {
                    "question": record["prompt"],
                    "reference": record["answer"],
                    "response": completion,
                    "correct": rule(completion, record["answer"]),
                    "kind": "policy",
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scalar", default="runs/rm_scalar/hf")
    parser.add_argument("--generative", default="runs/rm_generative/hf")
    parser.add_argument("--heldout", default="shards/rm/heldout-*.tar.gz")
    parser.add_argument(
        "--policy", default="runs/tiny_sft/hf", help="a policy folder to sample responses from ('' to skip)"
    )
    parser.add_argument("--policy-prompts", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128, help="judgements per timed batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    heldout = list(read_records(shard_urls(args.heldout), split_by_rank=False))
    positive_rate = sum(r["correct"] for r in heldout) / len(heldout)
    judges = {
        "rule": FinalAnswerMatch("A:"),
        "scalar": ScalarRM(args.scalar),
        "generative": GenerativeRM(Pretrained(args.generative)),
    }
    policy = (
        policy_rows(args.policy, args.policy_prompts, 8, args.seed)
        if args.policy and Path(args.policy).is_dir()
        else []
    )
    batch = heldout[: args.batch]
    report = {
        "heldout_records": len(heldout),
        "majority_baseline": round(max(positive_rate, 1 - positive_rate), 4),
        "policy_responses": len(policy),
        "policy_positive_rate": round(sum(r["correct"] for r in policy) / max(len(policy), 1), 4),
    }
    for name, judge in judges.items():
        report[name] = {"heldout": agreement(judge, heldout)}
        if policy:
            report[name]["policy"] = agreement(judge, policy)
        seconds = median_seconds(
            lambda judge=judge: judge.judge_many(
                [r["question"] for r in batch], [r["response"] for r in batch], [r["reference"] for r in batch]
            ),
            args.repeats,
        )
        report[name]["judgements_per_s"] = round(len(batch) / seconds, 1)
    scores = judges["scalar"].scores(
        [r["question"] for r in heldout], [r["response"] for r in heldout], [r["reference"] for r in heldout]
    )
    report["scalar"]["heldout"]["auc"] = round(
        float(binary_auroc(scores, torch.tensor([int(r["correct"]) for r in heldout]))), 4
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
