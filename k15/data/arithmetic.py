"""Column addition with a written carry chain: a tiny verifiable reasoning task with difficulty levels.

    prompt    Q:57+68=                        difficulty = number of digits per operand
    solution  7+8+0=15,5+6+1=12,A:125         one step per column, right to left: a+b+carry=sum

The chain of thought is the point: each step is easy, the answer needs all of them right, and a
longer number means a longer chain, so difficulty is a real knob on reasoning length.

The warm-up traces come from an imperfect teacher, as distilled long-CoT data does: a share
``SLOPPY_FRACTION`` of them is written by a sloppy solver that drops the carry out of a column
whose sum is only just over ten (10, 11 or 12). Its traces are self-consistent — the final answer
is read off its own wrong digits — so only checking the answer reveals the slip. SFT imitates the
slip (the more faithfully, the longer it trains); RL, which optimises correctness rather than
imitation, can remove it. This is the gap the tiny recipe demonstrates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ALPHABET = "0123456789+=,:AQ"
ANSWER_MARKER = "A:"
MAX_DIFFICULTY = 5
SLOPPY_FRACTION = 0.6
SLOPPY_SUMS = (10, 11, 12)


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


def worked_solution(problem: Problem, sloppy: bool = False) -> str:
    """The carry chain, right to left, then the final answer after ``A:``.

    ``sloppy`` drops the carry out of any non-final column whose sum is in ``SLOPPY_SUMS`` and
    reads the answer off the resulting digits.
    """
    a, b = operands(problem)
    width = max(len(a), len(b))
    a, b = a.zfill(width), b.zfill(width)
    steps, digits, carry = [], [], 0
    for column, (da, db) in enumerate(zip(reversed(a), reversed(b), strict=True)):
        total = int(da) + int(db) + carry
        steps.append(f"{da}+{db}+{carry}={total}")
        digits.append(str(total % 10))
        carry = total // 10
        if sloppy and column < width - 1 and total in SLOPPY_SUMS:
            carry = 0
    answer = (str(carry) if carry else "") + "".join(reversed(digits))
    return ",".join(steps) + f",{ANSWER_MARKER}{int(answer)}"


def teacher_solution(problem: Problem, rng: random.Random) -> tuple[str, bool]:
    """A warm-up trace from the imperfect teacher: (solution, whether the sloppy solver wrote it)."""
    sloppy = rng.random() < SLOPPY_FRACTION
    return worked_solution(problem, sloppy), sloppy
