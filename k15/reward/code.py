"""CodeTests: a completion is correct when the program it writes passes every test case (k1.5 §2.3.5).

    completion   … ```python\n<program>\n``` …          the last fenced code block is the program
    answer       [{"stdin": "1 2\n", "expected": "3\n"}, …]   the record's test cases, as JSON
    correct   ⇔  every test's verdict is "ok" in the hermetic Sandbox (k15/reward/sandbox.py)

A batch is scored with ``check_many``, which runs its programs on the sandbox's worker pool.
A completion with no code block is wrong; a record whose answer is not a list of test cases is
wrong too and counted in ``bad_tests`` (the data, not the policy, is at fault: fix the shard).
"""

from __future__ import annotations

import json
import re
from collections import Counter

from k15.reward.answer import Verifier
from k15.reward.sandbox import Sandbox, TestCase

FENCED = re.compile(r"```[^\n`]*\n(.*?)```", re.DOTALL)


def parse_test_cases(answer: str) -> list[TestCase] | None:
    """The answer's test cases, or None when it is not a non-empty JSON list of {stdin, expected}."""
    try:
        cases = [TestCase(str(case["stdin"]), str(case["expected"])) for case in json.loads(answer)]
    except (json.JSONDecodeError, TypeError, KeyError):
        return None
    return cases or None


class CodeTests(Verifier):
    """Runs the completion's program on the record's test cases.

    Args:
        language: ``python`` or ``cpp`` (g++ -O2 -std=c++17).
        cpu_seconds, memory_mb, wall_seconds, workers: see ``Sandbox``.
    """

    def __init__(self, language: str = "python", cpu_seconds: int = 2, memory_mb: int = 256, wall_seconds: float = 4.0, workers: int | None = None):
        self.language = language
        self.sandbox = Sandbox(cpu_seconds=cpu_seconds, memory_mb=memory_mb, wall_seconds=wall_seconds, workers=workers)
        self.verdicts: Counter[str] = Counter()  # every test run's verdict, for the caller to log
        self.bad_tests = 0

    def extract(self, completion: str) -> str | None:
        blocks = FENCED.findall(completion)
        return blocks[-1] if blocks else None

    def __call__(self, completion: str, answer: str) -> bool:
        return self.check_many([completion], [answer])[0]

    def check_many(self, completions: list[str], answers: list[str]) -> list[bool]:
        jobs, runnable = [], []
        for n, (completion, answer) in enumerate(zip(completions, answers, strict=True)):
            program, cases = self.extract(completion), parse_test_cases(answer)
            self.bad_tests += cases is None
            if program is not None and cases is not None:
                jobs.append((program, cases, self.language))
                runnable.append(n)
        correct = [False] * len(completions)
        for n, result in zip(runnable, self.sandbox.run_many(jobs), strict=True):
            self.verdicts.update(result.verdicts)
            correct[n] = result.reward("all") == 1.0
        return correct
