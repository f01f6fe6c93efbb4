"""Reward shaping: pure functions, no framework (``k15.reward.terms`` wraps them as reward terms).

Length penalty (paper §2.3.3). Among the k samples of one prompt, with len_j the response length:

    λ_j = 0.5 − (len_j − min_len) / (max_len − min_len)            (λ_j = 0 when max_len = min_len)
    len_reward_j = λ_j            if trajectory j is correct
                   min(0, λ_j)    otherwise

so the shortest correct answer earns +0.5, the longest −0.5, and a wrong answer is never paid for
being short.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor


def length_reward(lengths: Tensor, correct: Tensor) -> Tensor:
    """k1.5 length reward per sample. lengths, correct: [P, k] → [P, k], values in [−0.5, 0.5]."""
    lengths = lengths.to(torch.float64)
    shortest = lengths.min(dim=1, keepdim=True).values
    longest = lengths.max(dim=1, keepdim=True).values
    span = longest - shortest
    lam = torch.where(
        span > 0, 0.5 - (lengths - shortest) / torch.where(span > 0, span, 1.0), torch.zeros_like(lengths)
    )
    return torch.where(correct.bool(), lam, lam.clamp(max=0)).to(torch.float32)


def format_reward(completions: list[str], pattern: str) -> Tensor:
    """Format reward: 1 where the whole completion matches ``pattern`` (a regular expression, e.g.
    a chain of thought, then the answer marker and an answer), else 0. [N] → [N].

    It pays for the shape of a response, never its correctness, so its weight should stay well
    below the correctness reward's 1.
    """
    compiled = re.compile(pattern, re.DOTALL)
    return torch.tensor([float(compiled.fullmatch(c) is not None) for c in completions])


def repeated_ngram_share(tokens: list[int], n: int) -> float:
    """ρ = share of a response's n-grams that repeat an earlier n-gram of the same response.

        g_t = (y_t, …, y_{t+n−1}),  t = 0 … L−n
        ρ   = |{t : g_t ∈ {g_0, …, g_{t−1}}}| / (L − n + 1)            (ρ = 0 when L < n)

    0 for a response with no repeated n-gram; → 1 for one that loops on a short block (a block of
    b ≥ n tokens repeated m times gives ρ = 1 − b / (m·b − n + 1) when its n-grams are distinct).
    Choose n longer than the phrases a good response legitimately repeats.
    """
    grams = [tuple(tokens[t : t + n]) for t in range(len(tokens) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0
