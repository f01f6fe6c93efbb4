"""Verifiers: is a completion correct, and why (k1.5 §2.3.5's rule checks, code tests, reward models)?

A verifier judges one (question, completion, reference answer) triple:

    Verdict(correct ∈ {True, False}, reason)       reason: a short category, e.g. "match",
                                                   "no_answer", "timeout", "invalid"

Reasons are categories, not prose, so a run can count them (``reward/correct/<reason>``).
Verifiers swap in YAML: ``verifier: {class_path: k15.reward.math.MathVerify}``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str


class Verifier:
    """Judges completions against reference answers; subclasses implement ``judge``."""

    def judge(self, question: str, completion: str, answer: str) -> Verdict:
        raise NotImplementedError

    def judge_many(self, questions: list[str], completions: list[str], answers: list[str]) -> list[Verdict]:
        """A batch; verifiers that can run it in parallel or batched (code tests, reward models) override this."""
        return [self.judge(q, c, a) for q, c, a in zip(questions, completions, answers, strict=True)]

    def __call__(self, completion: str, answer: str) -> bool:
        """Shorthand for a question-free check: is ``completion`` correct?"""
        return self.judge("", completion, answer).correct


class FinalAnswerMatch(Verifier):
    """Correct iff the text after the last ``marker`` equals the reference answer exactly.

    A completion without the marker is wrong (``no_answer``), so an unfinished chain of thought
    earns nothing.

    Args:
        marker: what precedes the final answer in a completion, e.g. ``"A:"``.
    """

    def __init__(self, marker: str = "A:"):
        self.marker = marker

    def extract(self, completion: str) -> str | None:
        """The completion's final answer, or None when it gives none."""
        head, found, answer = completion.rpartition(self.marker)
        return answer.strip() if found else None

    def judge(self, question: str, completion: str, answer: str) -> Verdict:
        given = self.extract(completion)
        if given is None:
            return Verdict(False, "no_answer")
        return Verdict(True, "match") if given == answer.strip() else Verdict(False, "mismatch")
