"""Which prompts an RL iteration draws (k1.5 §2.3.4): curriculum stages and prioritized sampling.

    stage(i)    the first stage whose ``until`` is past iteration i (the last may be open-ended);
                it admits prompts with min_difficulty ≤ difficulty ≤ max_difficulty
    w_i         max(1 − s_i, floor)   prioritized: prompts the policy fails are drawn more, and a
                                      solved prompt (s_i = 1) keeps the floor so it is not starved
                1                     uniform
    P(draw i)   w_i / Σ_j w_j over the stage's prompts
    s_i         tracked success rate: s ← (1 − β)·s + β·(share of prompt i's k samples correct),
                starting from s = 0 (an unseen prompt has the highest priority)

Pure functions and a dataclass; no framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Stage:
    """A curriculum stage: the prompts iterations before ``until`` draw from.

    until: first iteration after this stage (None: it lasts to the end).
    min_difficulty, max_difficulty: inclusive difficulty range (None: unbounded).
    """

    until: int | None = None
    min_difficulty: int | None = None
    max_difficulty: int | None = None

    def admits(self, difficulty):
        """Whether min_difficulty ≤ difficulty ≤ max_difficulty: for an int, or elementwise for a tensor."""
        low = float("-inf") if self.min_difficulty is None else self.min_difficulty
        high = float("inf") if self.max_difficulty is None else self.max_difficulty
        return (difficulty >= low) & (difficulty <= high)


def stage_at(stages: Sequence[Stage], iteration: int) -> Stage:
    """The stage iteration ``iteration`` belongs to; past every ``until``, the last stage."""
    for stage in stages:
        if stage.until is None or iteration < stage.until:
            return stage
    return stages[-1]


def sampling_weights(success: Tensor, floor: float, prioritized: bool = True) -> Tensor:
    """w_i = max(1 − s_i, floor) (prioritized) or 1 (uniform). [n] → [n]"""
    if not prioritized:
        return torch.ones_like(success)
    return (1 - success).clamp(min=floor)


def updated_success(previous: float, correct_share: float, decay: float) -> float:
    """s ← (1 − β)·s + β·correct_share, with β = ``decay`` (1: remember only the latest try)."""
    return (1 - decay) * previous + decay * correct_share
