"""Reward shaping: pure tensor functions, no framework.

Length penalty (paper §2.3.3). Among the k samples of one prompt, with len_j the response length:

    λ_j = 0.5 − (len_j − min_len) / (max_len − min_len)            (λ_j = 0 when max_len = min_len)
    len_reward_j = λ_j            if trajectory j is correct
                   min(0, λ_j)    otherwise

so the shortest correct answer earns +0.5, the longest −0.5, and a wrong answer is never paid for
being short.
"""

from __future__ import annotations

import torch
from torch import Tensor


def length_reward(lengths: Tensor, correct: Tensor) -> Tensor:
    """k1.5 length reward per sample. lengths, correct: [P, k] → [P, k], values in [−0.5, 0.5]."""
    lengths = lengths.to(torch.float64)
    shortest = lengths.min(dim=1, keepdim=True).values
    longest = lengths.max(dim=1, keepdim=True).values
    span = longest - shortest
    lam = torch.where(span > 0, 0.5 - (lengths - shortest) / torch.where(span > 0, span, 1.0), torch.zeros_like(lengths))
    return torch.where(correct.bool(), lam, lam.clamp(max=0)).to(torch.float32)
