"""RewardModule: correctness from a verifier, plus the k1.5 length penalty and shaping.

    r_j = 1[verifier(y_j) = answer] + w(i) · len_reward_j − c · 1[y_j was stopped for repeating]
          + f · 1[y_j has the expected format]

with w(i) = 0 for i < warmup, else weight (len_reward_j from ``k15.reward.shaping.length_reward``).
Thin: the math lives in pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from k15.reward.answer import FinalAnswerMatch, Verifier
from k15.reward.shaping import format_reward, length_reward


@dataclass
class Rewards:
    """Per-trajectory rewards, each [P, k]."""

    total: Tensor
    correct: Tensor
    length: Tensor
    format: Tensor


class RewardModule(LightningModule):
    """Scores the k completions of each prompt.

    Args:
        verifier: decides correctness of one completion against the reference answer.
        length_penalty_weight: weight of the k1.5 length reward (0 turns it off).
        length_penalty_warmup_iterations: RL iterations before the length reward switches on.
        repeat_penalty: c, subtracted from trajectories stopped for repeating themselves.
        format_pattern: a regular expression a well-formed completion matches in full (None: no
            format reward), e.g. ``"[0-9+=,]*A:[0-9]+"`` for the tiny task.
        format_weight: f, the format reward's weight.
    """

    def __init__(
        self,
        verifier: Verifier | None = None,
        length_penalty_weight: float = 0.0,
        length_penalty_warmup_iterations: int = 0,
        repeat_penalty: float = 0.0,
        format_pattern: str | None = None,
        format_weight: float = 0.0,
    ):
        super().__init__()
        self.verifier = verifier or FinalAnswerMatch()
        self.length_penalty_weight = length_penalty_weight
        self.length_penalty_warmup_iterations = length_penalty_warmup_iterations
        self.repeat_penalty = repeat_penalty
        if format_weight and format_pattern is None:
            raise ValueError("reward.format_weight needs a reward.format_pattern to score against")
        self.format_pattern = format_pattern
        self.format_weight = format_weight

    def correctness(self, completions: list[str], answers: list[str]) -> Tensor:
        """[N] floats in {0, 1}."""
        return torch.tensor([float(v.correct) for v in self.verifier.judge_many([""] * len(completions), completions, answers)])

    def forward(
        self, completions: list[str], answers: list[str], lengths: Tensor, finish_reasons: list[str], k: int, iteration: int
    ) -> Rewards:
        """completions, answers, finish_reasons: N = P·k, prompt-major; lengths: [N] response tokens."""
        correct = self.correctness(completions, answers).view(-1, k)
        length = length_reward(lengths.view(-1, k), correct)
        weight = self.length_penalty_weight if iteration >= self.length_penalty_warmup_iterations else 0.0
        repeated = torch.tensor([reason == "repeat" for reason in finish_reasons], dtype=torch.float32).view(-1, k)
        formatted = (format_reward(completions, self.format_pattern) if self.format_pattern else torch.ones(len(completions))).view(-1, k)
        total = correct + weight * length - self.repeat_penalty * repeated + self.format_weight * formatted
        return Rewards(total=total, correct=correct, length=length, format=formatted)
