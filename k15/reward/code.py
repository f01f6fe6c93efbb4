"""CodeTests: a completion is correct when the program it writes passes every test case (k1.5 §2.3.5).

    completion   … ```python\n<program>\n``` …          the last fenced code block is the program
    answer       [{"stdin": "1 2\n", "expected": "3\n"}, …]   the record's test cases, as JSON
    correct   ⇔  every test's verdict is "ok" in the hermetic Sandbox (k15/reward/sandbox.py)

A batch is judged with ``judge_many``, which runs its programs on the sandbox's worker pool.
Reasons: ``pass``; the first failing test's verdict (``wrong``, ``timeout``, ``memory``, …);
``no_code`` for a completion with no code block; ``bad_tests`` for a record whose answer is not a
list of test cases (the data, not the policy, is at fault: fix the shard; counted as ``bad_tests``).
"""

from __future__ import annotations

import json
import re

from k15.reward.answer import Verdict, Verifier
from k15.reward.sandbox import VERDICTS, Sandbox, TestCase

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

    # every test run's verdict (``tests_ok``, ``tests_timeout`` …), and records without usable tests
    counted = ("bad_tests", *(f"tests_{v}" for v in VERDICTS))

    def __init__(
        self,
        language: str = "python",
        cpu_seconds: int = 2,
        memory_mb: int = 256,
        wall_seconds: float = 4.0,
        workers: int | None = None,
    ):
        self.language = language
        self.sandbox = Sandbox(cpu_seconds=cpu_seconds, memory_mb=memory_mb, wall_seconds=wall_seconds, workers=workers)

    def extract(self, completion: str) -> str | None:
        blocks = FENCED.findall(completion)
        return blocks[-1] if blocks else None

    def judge(self, question: str, completion: str, answer: str) -> Verdict:
        return self.judge_many([question], [completion], [answer])[0]

    def judge_many(self, questions: list[str], completions: list[str], answers: list[str]) -> list[Verdict]:
        jobs, runnable, verdicts = [], [], []
        for n, (completion, answer) in enumerate(zip(completions, answers, strict=True)):
            program, cases = self.extract(completion), parse_test_cases(answer)
            if cases is None:
                self.count("bad_tests")
            verdicts.append(Verdict(False, "bad_tests" if cases is None else "no_code"))
            if program is not None and cases is not None:
                jobs.append((program, cases, self.language))
                runnable.append(n)
        for n, result in zip(runnable, self.sandbox.run_many(jobs), strict=True):
            for test_verdict in result.verdicts:
                self.count(f"tests_{test_verdict}")
            failed = next((v for v in result.verdicts if v != "ok"), None)
            verdicts[n] = Verdict(failed is None, failed or "pass")
        return verdicts
