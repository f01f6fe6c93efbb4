"""RewardModule: the reward of every response, a weighted sum of terms, with its breakdown (k1.5 §2.3).

    r_j = 1[verifier judges y_j correct] + Σ_c w_c(i) · s_c(y_j)

The verifier (a rule check, code tests or a reward model) decides correctness: it is what the
held-out accuracy, the curriculum's success rates and the length reward read. The shaping terms
(``k15.reward.terms``: length, repetition, format, …) add to it. Every term returns a score and a
reason per response; ``Rewards`` keeps each term's weighted part and reasons, so a run logs why its
rewards are what they are. Swapping the math checker for a reward model is a YAML edit:

    reward:
      class_path: k15.reward.RewardModule
      init_args:
        verifier: {class_path: k15.reward.math.MathVerify}
        shaping:
          - {class_path: k15.reward.LengthPenalty, init_args: {weight: 0.1, warmup_iterations: 10}}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from k15.metrics import shares
from k15.reward.answer import FinalAnswerMatch, Verifier
from k15.reward.terms import Responses, Shaping


@dataclass
class Rewards:
    """Per-response rewards [P, k], and each term's part of them."""

    total: Tensor  # r_j
    correct: Tensor  # 1[correct_j]
    parts: dict[str, Tensor]  # term name → w_c(i) · s_c [P, k]; "correct" → 1[correct_j]
    reasons: dict[str, list[str]]  # term name → [N] why each response scored as it did

    def breakdown(self, known: Mapping[str, Iterable[str]] | None = None) -> dict[str, float]:
        """``reward/<term>``: mean weighted part; ``reward/<term>/<reason>``: share of responses,
        also 0 for each reason in ``known[term]`` (seen in earlier iterations) that none has now."""
        out = {f"reward/{name}": float(part.mean()) for name, part in self.parts.items()}
        for name, reasons in self.reasons.items():
            out |= shares(Counter(reasons), (known or {}).get(name, ()), f"reward/{name}/")
        return out

    def explain(self, n: int) -> str:
        """Response n's reward as its parts, e.g. ``1.10 = correct 1.00 (match) + length 0.10 (bonus)``."""
        parts = " + ".join(
            f"{name} {float(part.flatten()[n]):.2f} ({self.reasons[name][n]})" for name, part in self.parts.items()
        )
        return f"{float(self.total.flatten()[n]):.2f} = {parts}"


class RewardModule(LightningModule):
    """Scores the k responses of each prompt.

    Args:
        verifier: judges each response correct or not (``FinalAnswerMatch``, ``MathVerify``,
            ``CodeTests``, a reward model …).
        shaping: weighted terms added to correctness (``LengthPenalty``, ``RepetitionPenalty``,
            ``FormatReward`` …), at most one of each kind.
    """

    def __init__(self, verifier: Verifier | None = None, shaping: list[Shaping] | None = None):
        super().__init__()
        self.verifier = verifier or FinalAnswerMatch()
        self.shaping = list(shaping or [])
        names = [term.name for term in self.shaping]
        if "correct" in names or len(set(names)) < len(names):
            raise ValueError(f"reward.shaping: each term at most once, and none named 'correct'; got {names}")

    def judge(self, questions: list[str], completions: list[str], answers: list[str]) -> tuple[Tensor, list[str]]:
        """1[correct] as [N] floats, and the verifier's reasons."""
        verdicts = self.verifier.judge_many(questions, completions, answers)
        return torch.tensor([float(v.correct) for v in verdicts]), [v.reason for v in verdicts]

    def verifier_counts(self, prefix: str = "reward/verifier/") -> dict[str, int]:
        """``{prefix}<name>``: what the verifier counted since the last call (``Verifier.take_counts``)."""
        return {f"{prefix}{name}": n for name, n in self.verifier.take_counts().items()}

    def forward(self, responses: Responses) -> Rewards:
        correct, why = self.judge(responses.questions, responses.completions, responses.answers)
        correct = correct.view(-1, responses.k)
        parts, reasons = {"correct": correct}, {"correct": why}
        for term in self.shaping:
            scores = term.score(responses, correct)
            parts[term.name] = term.weight_at(responses.iteration) * scores.values
            reasons[term.name] = scores.reasons
        return Rewards(total=sum(parts.values()), correct=correct, parts=parts, reasons=reasons)
