"""Shaping terms of the reward: each scores every response, says why, and has a weight (k1.5 §2.3.3).

    r_j = 1[correct_j] + Σ_c w_c(i) · s_c(y_j)

A term sees the iteration's responses and their correctness, and returns per response a score
s_c and a reason (a short category, counted in ``reward/<name>/<reason>``). Terms are listed in
YAML under ``reward.init_args.shaping``; the math is in ``k15.reward.shaping``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from k15.reward.shaping import format_reward, length_reward, repeated_ngram_share


@dataclass
class Responses:
    """The k responses to each of P prompts, prompt-major: response n answers prompt n // k."""

    questions: list[str]  # [N] the prompt each response answers
    completions: list[str]  # [N] decoded responses
    answers: list[str]  # [N] the reference answer of its prompt
    token_ids: list[list[int]]  # [N] the response's tokens
    finish_reasons: list[str]  # [N] "stop", "max_length", "repeat" (cut by the repeat detector)
    k: int
    iteration: int  # i, the RL iteration

    @property
    def lengths(self) -> Tensor:
        """[P, k] response lengths in tokens."""
        return torch.tensor([len(t) for t in self.token_ids]).view(-1, self.k)


@dataclass
class Scores:
    values: Tensor  # [P, k] s_c, before the weight
    reasons: list[str]  # [N]


class Shaping:
    """A weighted reward term. Subclasses set ``name`` and implement ``score``.

    Args:
        weight: w_c.
    """

    name = "shaping"

    def __init__(self, weight: float = 0.0):
        self.weight = weight

    def weight_at(self, iteration: int) -> float:
        """w_c(i); constant unless a term warms up."""
        return self.weight

    def score(self, responses: Responses, correct: Tensor) -> Scores:
        """s_c per response; ``correct``: [P, k] in {0, 1}."""
        raise NotImplementedError


class LengthPenalty(Shaping):
    """The k1.5 length reward (``length_reward``): within a group the shortest correct response
    earns +0.5, the longest −0.5, a wrong one never gains. Reasons: ``bonus``, ``penalty``, ``even``.

    Args:
        weight: w.
        warmup_iterations: w(i) = 0 for i < warmup_iterations (the paper warms up without it,
            since it slows early training).
    """

    name = "length"

    def __init__(self, weight: float = 0.0, warmup_iterations: int = 0):
        super().__init__(weight)
        self.warmup_iterations = warmup_iterations

    def weight_at(self, iteration: int) -> float:
        return self.weight if iteration >= self.warmup_iterations else 0.0

    def score(self, responses: Responses, correct: Tensor) -> Scores:
        values = length_reward(responses.lengths, correct)
        reasons = ["bonus" if v > 0 else "penalty" if v < 0 else "even" for v in values.flatten().tolist()]
        return Scores(values, reasons)


class RepetitionPenalty(Shaping):
    """s_j = −1 for a response the repeat detector cut (``finish_reason == "repeat"``), else −ρ_j,
    the share of its ``ngram``-token n-grams that repeat an earlier one (``repeated_ngram_share``).
    Reasons: ``looped``, ``repeats``, ``clean``.

    Args:
        weight: w.
        ngram: n, in tokens (None: only cut responses are penalised).
    """

    name = "repetition"

    def __init__(self, weight: float = 0.0, ngram: int | None = None):
        super().__init__(weight)
        self.ngram = ngram

    def score(self, responses: Responses, correct: Tensor) -> Scores:
        values, reasons = [], []
        for tokens, finish in zip(responses.token_ids, responses.finish_reasons, strict=True):
            share = 1.0 if finish == "repeat" else repeated_ngram_share(tokens, self.ngram) if self.ngram else 0.0
            values.append(0.0 - share)  # +0.0, not −0.0, for a clean response
            reasons.append("looped" if finish == "repeat" else "repeats" if share > 0 else "clean")
        return Scores(torch.tensor(values).view(-1, responses.k), reasons)


class FormatReward(Shaping):
    """s_j = 1[the whole response matches ``pattern``] (``format_reward``): pays for the shape of a
    response, never its correctness, so keep w well below 1. Reasons: ``formatted``, ``unformatted``.

    Args:
        weight: w.
        pattern: a regular expression, e.g. ``"[0-9+=,]*A:[0-9]+"`` for the tiny task.
    """

    name = "format"

    def __init__(self, pattern: str, weight: float = 0.0):
        super().__init__(weight)
        self.pattern = pattern

    def score(self, responses: Responses, correct: Tensor) -> Scores:
        values = format_reward(responses.completions, self.pattern)
        return Scores(values.view(-1, responses.k), ["formatted" if v else "unformatted" for v in values.tolist()])
