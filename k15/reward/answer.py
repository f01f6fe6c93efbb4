"""Verifiers: is a completion's final answer the reference answer?"""

from __future__ import annotations


class Verifier:
    """Decides whether a completion's final answer is the reference answer; swapped in YAML
    (``verifier: {class_path: k15.reward.math.MathVerify}``)."""

    def extract(self, completion: str) -> str | None:
        """The completion's final answer, or None when it gives none."""
        raise NotImplementedError

    def __call__(self, completion: str, answer: str) -> bool:
        raise NotImplementedError

    def check_many(self, completions: list[str], answers: list[str]) -> list[bool]:
        """A batch of checks; verifiers that can run them in parallel (code tests) override this."""
        return [self(c, a) for c, a in zip(completions, answers, strict=True)]


class FinalAnswerMatch(Verifier):
    """Correct iff the text after the last ``marker`` equals the reference answer exactly.

    A completion without the marker is wrong, so an unfinished chain of thought earns nothing.

    Args:
        marker: what precedes the final answer in a completion, e.g. ``"A:"``.
    """

    def __init__(self, marker: str = "A:"):
        self.marker = marker

    def extract(self, completion: str) -> str | None:
        head, found, answer = completion.rpartition(self.marker)
        return answer.strip() if found else None

    def __call__(self, completion: str, answer: str) -> bool:
        return self.extract(completion) == answer.strip()
