"""Test-case generation for programming problems (Kimi k1.5 §2.3.5), and the rules that filter it.

A problem is a folder (``problems/<name>/``): ``statement.md`` (front matter ``difficulty: 1..5``,
optional ``split: heldout``), ``generator.py`` and ``solutions/*.py``, n reference solutions. The
generator reads one integer seed on stdin and prints one test input; it is run N times with seeds
``seed·10⁶ + i``, i = 0..N−1 (repeated inputs are kept once). Every solution is then run on every
input in the Sandbox; o_{s,x} is solution s's stdout on input x, or ∅ when it crashed, timed out or
ran out of memory. Outputs are compared after ``canonical_output`` (trailing whitespace ignored).

    agree(x)    = max_o #{s : o_{s,x} = o ≠ ∅}
    keep x      ⇔ agree(x) ≥ ⌈α·n⌉                       α = 0.7: 7 of 10 solutions agree
    expected(x) = that majority output
    T           = the kept inputs with their expected outputs
    s passes    ⇔ o_{s,x} = expected(x) for every x ∈ T
    keep problem ⇔ |T| > 0 and #{s passes} ≥ ⌈β·n⌉        β = 0.9: 9 of 10 solutions pass

The thresholds are fractions so that they hold for any n. A tie between two outputs that both reach
⌈α·n⌉ (possible only for α ≤ 0.5) is no majority. Whether a solution passes T is read from the outputs
already collected rather than by a second run: the programs are deterministic, so a rerun only costs.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from k15.reward.sandbox import Result, Sandbox, TestCase, canonical_output, same_output

FINISHED = ("ok", "wrong")  # the program exited cleanly; its stdout is its answer
SEED_STRIDE = 10**6  # seeds of different --seed values never overlap for N < 10⁶


@dataclass(frozen=True)
class Problem:
    """A programming problem: the prompt's statement, a test-input generator, reference solutions."""

    name: str
    statement: str
    generator: str
    solutions: dict[str, str]  # file name → source
    difficulty: int  # 1 (easiest) .. 5
    split: str = "train"  # or "heldout"


@dataclass
class Report:
    """What generation did for one problem."""

    name: str
    generated: int  # generator runs that printed an input
    distinct: int  # of those, different inputs
    tests: int  # inputs kept (enough solutions agree)
    passed: dict[str, int] = field(default_factory=dict)  # solution → kept tests it passes
    kept: bool = False
    reason: str = ""


def required(fraction: float, n: int) -> int:
    """⌈fraction·n⌉, at least 1; rounded first so that 0.7·10 is 7, not 8 from float error."""
    return max(1, math.ceil(round(fraction * n, 9)))


def majority_output(outputs: list[str | None], min_agree: float) -> str | None:
    """The canonical output that ≥ ⌈min_agree·n⌉ of the n solutions printed, or None.

    ``None`` in ``outputs`` is a solution that failed on this input: it counts in n, never in a vote."""
    votes = Counter(canonical_output(o) for o in outputs if o is not None).most_common(2)
    if not votes or votes[0][1] < required(min_agree, len(outputs)):
        return None
    if len(votes) == 2 and votes[1][1] == votes[0][1]:
        return None
    return votes[0][0]


def keep_inputs(inputs: list[str], outputs: list[list[str | None]], min_agree: float) -> list[TestCase]:
    """The inputs with a majority output, as test cases. ``outputs[s][i]``: solution s on input i."""
    expected = [majority_output([row[i] for row in outputs], min_agree) for i in range(len(inputs))]
    return [TestCase(x, e) for x, e in zip(inputs, expected, strict=True) if e is not None]


def pass_counts(inputs: list[str], outputs: list[list[str | None]], tests: list[TestCase]) -> list[int]:
    """For each solution, how many of ``tests`` its ``outputs`` (on ``inputs``) get right."""
    expected = {t.stdin: t.expected for t in tests}
    return [
        sum(x in expected and o is not None and same_output(o, expected[x]) for x, o in zip(inputs, row, strict=True))
        for row in outputs
    ]


def problem_kept(passed: list[int], n_tests: int, min_pass: float) -> bool:
    """True when there are tests and ≥ ⌈min_pass·n⌉ of the n solutions pass every one of them."""
    return n_tests > 0 and sum(p == n_tests for p in passed) >= required(min_pass, len(passed))


def outputs_of(result: Result) -> list[str | None]:
    """Each test's stdout, or None where the program did not finish cleanly."""
    return [out if v in FINISHED else None for v, out in zip(result.verdicts, result.stdouts, strict=True)]


def generate_inputs(generator: str, sandbox: Sandbox, count: int, seed: int) -> tuple[int, list[str]]:
    """(runs that printed an input, the distinct inputs in seed order) from ``count`` generator runs."""
    seeds = [TestCase(f"{seed * SEED_STRIDE + i}\n", "") for i in range(count)]
    printed = [x for x in outputs_of(sandbox.run(generator, seeds)) if x is not None]
    return len(printed), list(dict.fromkeys(printed))


def generate_tests(
    problem: Problem, sandbox: Sandbox, inputs: int = 50, min_agree: float = 0.7, min_pass: float = 0.9, seed: int = 0
) -> tuple[list[TestCase], Report]:
    """The problem's kept test cases (empty when the problem is dropped) and a report; see the module
    docstring for the rules."""
    generated, distinct = generate_inputs(problem.generator, sandbox, inputs, seed)
    report = Report(problem.name, generated, len(distinct), 0)
    if not distinct:
        report.reason = "the generator printed no input"
        return [], report
    jobs = [(source, [TestCase(x, "") for x in distinct], "python") for source in problem.solutions.values()]
    outputs = [outputs_of(result) for result in sandbox.run_many(jobs)]
    tests = keep_inputs(distinct, outputs, min_agree)
    passed = pass_counts(distinct, outputs, tests)
    report.tests, report.passed = len(tests), dict(zip(problem.solutions, passed, strict=True))
    report.kept = problem_kept(passed, len(tests), min_pass)
    n, passing = len(passed), sum(p == len(tests) for p in passed)
    if not tests:
        report.reason = f"no input had {required(min_agree, n)} of {n} solutions agreeing"
    else:
        report.reason = f"{passing} of {n} solutions pass all {len(tests)} tests (need {required(min_pass, n)})"
    return (tests if report.kept else []), report


def load_problem(folder: Path) -> Problem:
    """A problem folder (see the module docstring) as a ``Problem``; the front matter is not part of the statement."""
    text = (folder / "statement.md").read_text()
    meta, statement = {}, text
    if text.startswith("---\n"):
        front, statement = text[4:].split("\n---\n", 1)
        meta = yaml.safe_load(front) or {}
    solutions = {path.name: path.read_text() for path in sorted((folder / "solutions").glob("*.py"))}
    if (
        not solutions
        or meta.get("difficulty") not in range(1, 6)
        or meta.get("split", "train") not in ("train", "heldout")
    ):
        raise ValueError(
            f"{folder}: needs solutions/*.py and front matter 'difficulty: 1..5' (and 'split: heldout' or none) in "
            "statement.md"
        )
    return Problem(
        folder.name,
        statement.strip(),
        (folder / "generator.py").read_text(),
        solutions,
        meta["difficulty"],
        meta.get("split", "train"),
    )


def load_problems(root: Path) -> list[Problem]:
    """Every problem folder under ``root`` (one with a statement.md), by name."""
    return [load_problem(path.parent) for path in sorted(root.glob("*/statement.md"))]
