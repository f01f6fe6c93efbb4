"""Held-out evaluation by sampling: pass@k, maj@k and response lengths, overall and by difficulty.

One held-out prompt, n sampled responses, c of them judged correct by the verifier:

    pass@1      c / n
    pass@k      1 − C(n−c, k) / C(n, k)             Chen et al. 2021: the unbiased estimate of "at least one
                = 1 − ∏_{i=n−c+1}^{n} (1 − k/i)     of k samples is correct", the product form with no huge
                                                    binomials (1 when n − c < k: every k-subset holds a correct one)
    maj@k       (1/B) Σ_b 1[the majority answer of block b is correct],   B = ⌊n/k⌋ disjoint blocks of k
                consecutive samples (block b = samples bk … bk+k−1)

Majority vote over a block: each response votes for its final answer as the verifier extracts it
(exact string; equivalent forms such as ``1/2`` and ``0.5`` vote apart). A response with no final
answer abstains; a block in which none answers is wrong. Among the answers with the most votes the
one voted first in the block wins (``Counter.most_common``, as in lm-evaluation-harness). The
winner is correct if the verifier judged its first voter correct (a deterministic verifier judges
one answer string the same way every time).

Why blocks: the samples are i.i.d., so every block is a fair draw of k samples and its vote an
unbiased estimate of maj@k. lm-evaluation-harness and lighteval vote over the first k only (block
0); averaging every block uses all n samples for less variance at O(n) cost, and at k = n it is the
plain vote over all samples. The exact mean over all C(n, k) subsets, as pass@k's estimate is, has
less variance still but no cheap closed form for a vote among many answers. Samples past the last
whole block (n mod k of them) do not vote.

A metric over a set of prompts is the mean over its prompts (each prompt weighs the same).
Response lengths are over every response (prompts × n): tokens generated, the stop token included;
``tokens_p90`` interpolates linearly between order statistics (numpy's default percentile).

Pure functions and a config class; no framework. ``k15.language_module`` samples, judges and logs.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from k15.errors import require_at_least_one

SEED_STRIDE = 1 << 20  # seeds per held-out batch and rank: more than any batch's prompts × samples


class Evaluation:
    """Held-out evaluation by sampling n responses per prompt (``model.init_args.evaluation``).

    Without it a module's validation is greedy decoding, one response per prompt
    (``heldout/accuracy``); with it, validation reports pass@k, maj@k and response lengths
    (``heldout/pass@1`` replaces ``heldout/accuracy``), and writes them with every prompt's
    samples to a JSON file.

    Args:
        samples: n, responses sampled per held-out prompt.
        ks: the k of pass@k and maj@k, each 1 ≤ k ≤ samples (None: 1, 2, 4, … up to samples, and
            samples). pass@1 is always reported; maj@1 never (a lone vote is its own correctness).
        temperature: sampling temperature (0: greedy, with samples: 1 — greedy accuracy by difficulty).
        top_p: nucleus sampling mass.
        max_new_tokens: a response's cap in tokens (None: the module's ``heldout_max_new_tokens``).
        majority_vote: report maj@k; needs a verifier that extracts final answers
            (``FinalAnswerMatch``, ``MathVerify``, ``CodeTests``).
        seed: sample j of held-out batch b on rank r (of R) is seeded ``seed + (b·R + r)·2²⁰ + j``, so
            every evaluation draws the same random numbers: two checkpoints differ by their weights,
            not their luck.
        json_path: where each evaluation is written, overwriting the last (None: ``validate.json`` in
            the logger's log_dir).
    """

    def __init__(
        self,
        samples: int = 8,
        ks: list[int] | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int | None = None,
        majority_vote: bool = True,
        seed: int = 0,
        json_path: str | None = None,
    ):
        require_at_least_one("model.evaluation", samples=samples, max_new_tokens=max_new_tokens)
        ks = default_ks(samples) if ks is None else ks
        if not all(1 <= k <= samples for k in ks):
            raise ValueError(f"model.evaluation.ks: every k must be in 1..samples ({samples}), got {ks}")
        if not 0 <= temperature < float("inf"):
            raise ValueError(f"model.evaluation.temperature must be a finite number ≥ 0 (0: greedy), got {temperature}")
        if temperature == 0 and samples > 1:
            raise ValueError(
                f"model.evaluation.temperature is 0 (greedy): its {samples} samples would all be one; set samples: 1"
            )
        if not 0 < top_p <= 1:
            raise ValueError(f"model.evaluation.top_p must be in (0, 1], got {top_p}")
        self.samples = samples
        self.ks = sorted({1, *ks})
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.majority_vote = majority_vote
        self.seed = seed
        self.json_path = json_path

    def first_seed(self, batch_idx: int, rank: int = 0, world_size: int = 1) -> int:
        """The seed of sample 0 of held-out batch ``batch_idx`` on ``rank``: ``seed + (b·R + r)·2²⁰``."""
        return self.seed + (batch_idx * world_size + rank) * SEED_STRIDE

    def settings(self) -> dict:
        """What the JSON file records of how the numbers were made."""
        return {
            "samples": self.samples,
            "ks": self.ks,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
        }


def default_ks(samples: int) -> list[int]:
    """1, 2, 4, … below ``samples``, and ``samples``."""
    return [2**i for i in range(samples.bit_length()) if 2**i < samples] + [samples]


@dataclass
class PromptSamples:
    """One held-out prompt's n responses as judged: what every metric is computed from, and what
    the JSON file keeps per prompt (records from several batches and ranks merge by concatenation)."""

    difficulty: int
    correct: list[bool]  # [n] the verifier's verdict on each response
    answers: list[str | None]  # [n] each response's final answer as the verifier extracts it (None: none)
    tokens: list[int]  # [n] each response's length in tokens, its stop token included
    prompt: str = ""
    reference: str = ""  # the record's answer


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 − C(n−c, k) / C(n, k) = 1 − ∏_{i=n−c+1}^{n} (1 − k/i): the chance that k of the n samples,
    drawn without replacement, include a correct one (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 ≤ c ≤ n and 1 ≤ k ≤ n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the majority answer of one block is correct (ties: the first voted; no answer: wrong)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    winner = votes.most_common(1)[0][0]  # most_common keeps first-seen order among equal counts
    return bool(correct[answers.index(winner)])


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """The mean of ``majority_correct`` over the ⌊n/k⌋ disjoint blocks of k consecutive samples."""
    n = len(answers)
    if not 1 <= k <= n or len(correct) != n:
        raise ValueError(f"maj@k needs 1 ≤ k ≤ n and n verdicts, got n={n}, k={k}, {len(correct)} verdicts")
    blocks = range(0, n - k + 1, k)
    return sum(majority_correct(answers[b : b + k], correct[b : b + k]) for b in blocks) / len(blocks)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, linear between the order statistics around position (len − 1)·q/100."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def token_stats(tokens: Sequence[int]) -> dict[str, float]:
    """Mean, median and 90th percentile of response lengths."""
    return {
        "tokens_mean": sum(tokens) / len(tokens),
        "tokens_median": percentile(tokens, 50),
        "tokens_p90": percentile(tokens, 90),
    }


def summarize(prompts: Sequence[PromptSamples], ks: Iterable[int], majority_vote: bool = True) -> dict[str, float]:
    """Every metric over ``prompts``: ``prompts``, ``samples``, ``pass@k`` (and ``maj@k`` for k ≥ 2) for
    each k, and the ``tokens_*`` statistics."""
    ks = sorted(set(ks))
    out = {"prompts": len(prompts), "samples": sum(len(p.correct) for p in prompts)}
    for k in ks:
        out[f"pass@{k}"] = mean(pass_at_k(len(p.correct), sum(p.correct), k) for p in prompts)
    for k in ks if majority_vote else ():
        if k > 1:
            out[f"maj@{k}"] = mean(maj_at_k(p.answers, p.correct, k) for p in prompts)
    return out | token_stats([t for p in prompts for t in p.tokens])


def evaluate(prompts: Sequence[PromptSamples], ks: Iterable[int], majority_vote: bool = True) -> dict:
    """``{"overall": summarize(all), "by_difficulty": {"<d>": summarize(prompts of difficulty d)}}``."""
    if not prompts:
        raise ValueError("evaluate: no held-out prompts to evaluate")
    ks = list(ks)
    groups: dict[int, list[PromptSamples]] = {}
    for prompt in prompts:
        groups.setdefault(prompt.difficulty, []).append(prompt)
    return {
        "overall": summarize(prompts, ks, majority_vote),
        "by_difficulty": {str(d): summarize(groups[d], ks, majority_vote) for d in sorted(groups)},
    }


def flat_metrics(result: dict, prefix: str = "heldout/") -> dict[str, float]:
    """``evaluate``'s result as logger keys: ``heldout/pass@1``, ``heldout/difficulty_3/pass@1``, …"""
    out = {f"{prefix}{key}": float(value) for key, value in result["overall"].items()}
    for difficulty, metrics in result["by_difficulty"].items():
        out |= {f"{prefix}difficulty_{difficulty}/{key}": float(value) for key, value in metrics.items()}
    return out


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)
