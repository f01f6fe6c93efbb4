"""RewardModule: correctness from a verifier, plus the k1.5 length penalty.

    r_j = 1[verifier(y_j) = answer] + w(i) · len_reward_j − c · 1[y_j was stopped for repeating]

with w(i) = 0 for i < warmup, else weight (len_reward_j from ``k15.reward.shaping.length_reward``).
Thin: the math lives in pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from k15.reward.answer import FinalAnswerMatch, Verifier
from k15.reward.shaping import length_reward


@dataclass
class Rewards:
    """Per-trajectory rewards, each [P, k]."""

    total: Tensor
    correct: Tensor
    length: Tensor


class RewardModule(LightningModule):
    """Scores the k completions of each prompt.

    Args:
        verifier: decides correctness of one completion against the reference answer.
        length_penalty_weight: weight of the k1.5 length reward (0 turns it off).
        length_penalty_warmup_iterations: RL iterations before the length reward switches on.
        repeat_penalty: c, subtracted from trajectories stopped for repeating themselves.
    """

    def __init__(
        self,
        verifier: Verifier | None = None,
        length_penalty_weight: float = 0.0,
        length_penalty_warmup_iterations: int = 0,
        repeat_penalty: float = 0.0,
    ):
        super().__init__()
        self.verifier = verifier or FinalAnswerMatch()
        self.length_penalty_weight = length_penalty_weight
        self.length_penalty_warmup_iterations = length_penalty_warmup_iterations
        self.repeat_penalty = repeat_penalty

    def correctness(self, completions: list[str], answers: list[str]) -> Tensor:
        """[N] floats in {0, 1}."""
        return torch.tensor([float(ok) for ok in self.verifier.check_many(completions, answers)])

    def forward(
        self, completions: list[str], answers: list[str], lengths: Tensor, finish_reasons: list[str], k: int, iteration: int
    ) -> Rewards:
        """completions, answers, finish_reasons: N = P·k, prompt-major; lengths: [N] response tokens."""
        correct = self.correctness(completions, answers).view(-1, k)
        length = length_reward(lengths.view(-1, k), correct)
        weight = self.length_penalty_weight if iteration >= self.length_penalty_warmup_iterations else 0.0
        repeated = torch.tensor([reason == "repeat" for reason in finish_reasons], dtype=torch.float32).view(-1, k)
        return Rewards(total=correct + weight * length - self.repeat_penalty * repeated, correct=correct, length=length)
