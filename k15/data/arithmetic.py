"""Column addition with a written carry chain: a tiny verifiable reasoning task with difficulty levels.

    prompt    Q:57+68=                        difficulty = number of digits per operand
    solution  7+8+0=15,5+6+1=12,A:125         one step per column, right to left: a+b+carry=sum

The chain of thought is the point: each step is easy, the answer needs all of them right, and a
longer number means a longer chain, so difficulty is a real knob on reasoning length.

A verbose (long-CoT) form of the same chain gives long2short (k1.5 §2.4) something to shorten.
It re-checks every column by adding it back in the other order, sum first, and restates the
whole sum before the answer, about 2.2× the plain trace's tokens and no more correct:

    verbose   7+8+0=15,15=8+7+0,5+6+1=12,12=6+5+1,57+68=125,A:125

Both forms use the same alphabet, so one model can write either; a policy can drop the checks
without changing its answer. A long-CoT teacher writes the verbose form ``VERBOSE_FRACTION`` of
the time and the plain one otherwise (``tools/make_shards.py --style mix``): the long model is
long at greedy decoding yet samples short traces now and then, which is what a length penalty
(or shortest rejection sampling) can select.

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
VERBOSE_FRACTION = 0.75
STYLES = ("plain", "verbose", "mix")


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


def worked_solution(problem: Problem, sloppy: bool = False, verbose: bool = False) -> str:
    """The carry chain, right to left, then the final answer after ``A:``.

    ``sloppy`` drops the carry out of any non-final column whose sum is in ``SLOPPY_SUMS`` and
    reads the answer off the resulting digits. ``verbose`` writes each column's check
    (``15=8+7+0``) after it and the restated sum (``57+68=125``) before the answer; the checks
    restate the solver's own digits, so a sloppy verbose trace is as self-consistent (and as
    wrong) as the plain one.
    """
    a, b = operands(problem)
    width = max(len(a), len(b))
    steps, digits, carry = [], [], 0
    for column, (da, db) in enumerate(zip(reversed(a.zfill(width)), reversed(b.zfill(width)), strict=True)):
        total = int(da) + int(db) + carry
        steps.append(f"{da}+{db}+{carry}={total}")
        if verbose:
            steps.append(f"{total}={db}+{da}+{carry}")
        digits.append(str(total % 10))
        carry = total // 10
        if sloppy and column < width - 1 and total in SLOPPY_SUMS:
            carry = 0
    answer = str(int((str(carry) if carry else "") + "".join(reversed(digits))))
    if verbose:
        steps.append(f"{a}+{b}={answer}")
    return ",".join(steps) + f",{ANSWER_MARKER}{answer}"


def teacher_solution(problem: Problem, rng: random.Random, verbose: bool = False) -> tuple[str, bool]:
    """A warm-up trace from the imperfect teacher, plain or ``verbose``: (solution, whether the
    sloppy solver wrote it). The style draws nothing from ``rng``: the same seed gives the same
    problems and slips in either style."""
    sloppy = rng.random() < SLOPPY_FRACTION
    return worked_solution(problem, sloppy, verbose), sloppy


def teacher_writes_verbose(style: str, rng: random.Random) -> bool:
    """Whether the teacher writes this trace verbose: always, never, or ``VERBOSE_FRACTION`` of
    the time for ``style`` ``verbose``, ``plain``, ``mix``."""
    if style not in STYLES:
        raise ValueError(f"style: one of {STYLES}, got {style!r}")
    return style == "verbose" or (style == "mix" and rng.random() < VERBOSE_FRACTION)
