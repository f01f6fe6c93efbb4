"""Column addition with a written carry chain: a tiny verifiable reasoning task with difficulty levels.

    prompt    Q:57+68=                        difficulty = number of digits per operand
    solution  7+8+0=15,5+6+1=12,A:125         one step per column, right to left: a+b+carry=sum

The chain of thought is the point: each step is easy, the answer needs all of them right, and a
longer number means a longer chain, so difficulty is a real knob on reasoning length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ALPHABET = "0123456789+=,:AQ"
ANSWER_MARKER = "A:"
MAX_DIFFICULTY = 5


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str
    difficulty: int


def sample_problem(rng: random.Random, difficulty: int) -> Problem:
    """Two ``difficulty``-digit operands (no leading zeros)."""
    low, high = (0 if difficulty == 1 else 10 ** (difficulty - 1)), 10**difficulty - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    return Problem(prompt=f"Q:{a}+{b}=", answer=str(a + b), difficulty=difficulty)


def operands(problem: Problem) -> tuple[str, str]:
    a, b = problem.prompt.removeprefix("Q:").removesuffix("=").split("+")
    return a, b


def worked_solution(problem: Problem) -> str:
    """The carry chain, right to left, then the final answer after ``A:``."""
    a, b = operands(problem)
    width = max(len(a), len(b))
    a, b = a.zfill(width), b.zfill(width)
    steps, carry = [], 0
    for da, db in zip(reversed(a), reversed(b)):
        total = int(da) + int(db) + carry
        steps.append(f"{da}+{db}+{carry}={total}")
        carry = total // 10
    return ",".join(steps) + f",{ANSWER_MARKER}{problem.answer}"
