"""Verifiers: is a completion correct, and why (k1.5 §2.3.5's rule checks, code tests, reward models)?

A verifier judges one (question, completion, reference answer) triple:

    Verdict(correct ∈ {True, False}, reason)       reason: a short category, e.g. "match",
                                                   "no_answer", "timeout", "invalid"

Reasons are categories, not prose, so a run can count them (``reward/correct/<reason>``).
Verifiers swap in YAML: ``verifier: {class_path: k15.reward.math.MathVerify}``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


def final_answer(completion: str, marker: str) -> str | None:
    """The completion's text after the last ``marker``, stripped; None when it has no marker."""
    _, found, answer = completion.rpartition(marker)
    return answer.strip() if found else None


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str


class Verifier:
    """Judges completions against reference answers; subclasses implement ``judge``.

    Counters: events worth watching that a verdict's reason does not show (a check that ran out of
    time, a judge's unreadable output, a record's broken tests) are ``count``-ed by name; every
    name in ``counted`` is logged each iteration as ``reward/verifier/<name>`` (``take_counts``).
    """

    counted: tuple[str, ...] = ()

    def count(self, name: str, n: int = 1) -> None:
        if name not in self.counted:
            raise ValueError(f"{type(self).__name__} counts {self.counted}, not {name!r}")
        # kept in the instance's __dict__, made on first use: a subclass need not call Verifier.__init__
        vars(self).setdefault("_counts", Counter())[name] += n

    def take_counts(self) -> dict[str, int]:
        """Each counter's count since the last call (0 for those that did not occur); then all are zero."""
        counts = vars(self).pop("_counts", Counter())
        return {name: counts[name] for name in self.counted}

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
        return final_answer(completion, self.marker)

    def judge(self, question: str, completion: str, answer: str) -> Verdict:
        given = self.extract(completion)
        if given is None:
            return Verdict(False, "no_answer")
        return Verdict(True, "match") if given == answer.strip() else Verdict(False, "mismatch")
