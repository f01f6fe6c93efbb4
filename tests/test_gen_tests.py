"""Test-case generation (k1.5 §2.3.5): the keep/drop rules as properties, the pipeline and
tools/gen_tests.py on the real sandbox, and the shipped shards/code checked against problems/."""

import json
import math
import runpy
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from k15.data.shards import read_records, shard_urls
from k15.reward.code import CodeTests, parse_test_cases
from k15.reward.sandbox import Sandbox, canonical_output
from k15.reward.sandbox import TestCase as Case  # not collected as a test class
from k15.reward.testgen import (
    Problem,
    generate_tests,
    keep_inputs,
    load_problem,
    load_problems,
    majority_output,
    pass_counts,
    problem_kept,
    required,
)

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS, SHARDS = ROOT / "problems", ROOT / "shards/code"

outputs = st.lists(st.one_of(st.none(), st.sampled_from(["1", "1\n", "1  \n\n", "2", "2\n", " 2", ""])), max_size=12)
fractions = st.fractions(min_value=Fraction(1, 20), max_value=1, max_denominator=20)


@settings(max_examples=200, deadline=None)
@given(outputs, fractions)
def test_majority_is_an_unrivalled_output_of_at_least_ceil_fraction_n_solutions(outs, fraction):
    counts = {}
    for o in outs:
        if o is not None:  # a failed solution is in n but votes for nothing
            counts[canonical_output(o)] = counts.get(canonical_output(o), 0) + 1
    need = max(1, math.ceil(fraction * len(outs)))  # exact: fraction is a Fraction here
    winners = [o for o, c in counts.items() if c >= need and c == max(counts.values())]
    assert majority_output(outs, float(fraction)) == (winners[0] if len(winners) == 1 else None)


@settings(max_examples=100, deadline=None)
@given(outputs, fractions, st.randoms(use_true_random=False))
def test_majority_ignores_the_order_of_solutions(outs, fraction, rng):
    shuffled = list(outs)
    rng.shuffle(shuffled)
    assert majority_output(shuffled, float(fraction)) == majority_output(outs, float(fraction))


@settings(max_examples=100, deadline=None)
@given(outputs, fractions)
def test_a_failed_solution_never_helps_an_input_be_kept(outs, fraction):
    with_failure = majority_output(outs + [None], float(fraction))
    assert with_failure is None or with_failure == majority_output(outs, float(fraction))
    assert majority_output([None] * len(outs), float(fraction)) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=12), st.integers(0, 6), fractions)
def test_a_problem_is_kept_iff_enough_solutions_pass_every_test(passed, n_tests, fraction):
    passed = [min(p, n_tests) for p in passed]
    passing = sum(p == n_tests for p in passed)
    assert problem_kept(passed, n_tests, float(fraction)) == (
        n_tests > 0 and Fraction(passing, len(passed)) >= fraction
    )


def test_the_paper_thresholds_on_ten_solutions():
    assert (required(0.7, 10), required(0.9, 10), required(0.7, 6), required(0.9, 6)) == (7, 9, 5, 6)
    assert majority_output(["3\n"] * 7 + ["4"] * 3, 0.7) == "3"
    assert majority_output(["3"] * 6 + [None] * 4, 0.7) is None
    assert problem_kept([5] * 9 + [4], 5, 0.9) and not problem_kept([5] * 8 + [4, 0], 5, 0.9)


def test_kept_inputs_and_pass_counts_by_hand():
    inputs = ["a", "b", "c"]
    outs = [["1", "2", "3"], ["1", "2", None], ["1", "9", "3"]]  # solution × input
    tests = keep_inputs(inputs, outs, 2 / 3)
    assert tests == [Case("a", "1"), Case("b", "2"), Case("c", "3")]
    assert pass_counts(inputs, outs, tests) == [3, 2, 2]
    assert keep_inputs(inputs, outs, 1.0) == [Case("a", "1")]


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(cpu_seconds=1, wall_seconds=3, workers=2)


DOUBLE = {
    "a.py": "n = int(input())\nprint(2 * n)\n",
    "b.py": "print(int(input()) * 2)\n",
    "c.py": "n = int(input())\nprint(n + n)\n",
    "d.py": "n = int(input())\nprint(5 if n == 2 else 2 * n)\n",  # disagrees on 2
    "e.py": "n = int(input())\nassert n != 2\nprint(n << 1)\n",  # crashes on 2
    "f.py": "n = int(input())\nprint(7 if n == 3 else n * 2)\n",  # wrong on 3
}
DOUBLING = Problem("doubling", "Print twice n.", "print(int(input()) % 4)\n", DOUBLE, difficulty=1)


def test_pipeline_on_a_shipped_problem_keeps_every_agreed_input(sandbox):
    problem = load_problem(PROBLEMS / "sum_list")
    tests, report = generate_tests(problem, sandbox, inputs=4, seed=3)
    assert report.kept and report.generated == report.distinct == report.tests == len(tests) == 4
    assert set(report.passed.values()) == {4} and len(report.passed) == len(problem.solutions) >= 5
    for test in tests:
        assert test.expected == str(sum(map(int, test.stdin.split()[1:])))


def test_inputs_without_agreement_are_dropped_and_a_wrong_solution_counted(sandbox):
    # inputs 0..3; on 2 only a, b, c, f agree: 4 of 6 < ⌈0.7·6⌉ = 5. On 3, f is outvoted 5 to 1.
    tests, report = generate_tests(DOUBLING, sandbox, inputs=4)
    assert (report.generated, report.tests, report.kept) == (4, 3, False)  # 5 of 6 pass; ⌈0.9·6⌉ = 6
    assert report.passed == {"a.py": 3, "b.py": 3, "c.py": 3, "d.py": 3, "e.py": 3, "f.py": 2}
    assert tests == [] and "5 of 6 solutions pass all 3 tests (need 6)" in report.reason
    kept, _ = generate_tests(DOUBLING, sandbox, inputs=4, min_pass=0.8)
    assert [(t.stdin, t.expected) for t in kept] == [("0\n", "0"), ("1\n", "2"), ("3\n", "6")]


def test_a_generator_that_fails_drops_the_problem(sandbox):
    broken = Problem("broken", "?", "raise SystemExit(1)\n", DOUBLE, difficulty=1)
    tests, report = generate_tests(broken, sandbox, inputs=2)
    assert (tests, report.generated, report.kept, report.reason) == ([], 0, False, "the generator printed no input")


def test_tool_writes_train_and_heldout_shards_and_totals(tmp_path, monkeypatch, capsys):
    for name, source in DOUBLE.items():
        (tmp_path / "problems/doubling/solutions").mkdir(parents=True, exist_ok=True)
        (tmp_path / "problems/doubling/solutions" / name).write_text(source)
    (tmp_path / "problems/doubling/generator.py").write_text(DOUBLING.generator)
    (tmp_path / "problems/doubling/statement.md").write_text("---\ndifficulty: 2\n---\nPrint twice n.\n")
    shutil.copytree(PROBLEMS / "count_vowels", tmp_path / "problems/count_vowels")  # split: heldout
    argv = [
        "gen_tests.py",
        "--problems",
        str(tmp_path / "problems"),
        "--out",
        str(tmp_path / "out"),
        "--inputs",
        "4",
        "--pass",
        "0.8",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "tools/gen_tests.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    totals = json.loads(lines[-1])
    assert (totals["problems_kept"], totals["inputs_generated"], totals["tests_written"], totals["records"]) == (
        2,
        8,
        7,
        {"train": 1, "heldout": 1},
    )
    assert any(line.startswith("doubling") and "f.py 2/3" in line for line in lines)
    (train,) = read_records(shard_urls(str(tmp_path / "out/train-*.tar.gz")), split_by_rank=False)
    assert train["prompt"].startswith("Print twice n.") and "```python" in train["prompt"] and train["difficulty"] == 2
    assert [t.stdin for t in parse_test_cases(train["answer"])] == ["0\n", "1\n", "3\n"]


def test_shipped_shards_match_the_problems_and_pass_their_reference_solutions():
    problems = {p.name: p for p in load_problems(PROBLEMS)}
    records = {
        r["name"]: (split, r)
        for split in ("train", "heldout")
        for r in read_records(shard_urls(str(SHARDS / f"{split}-*.tar.gz")), split_by_rank=False)
    }
    assert "rounded_mean" not in records and len(records) == len(problems) - 1  # the deliberately dropped one
    completions, answers = [], []
    for name, (split, record) in records.items():
        problem = problems[name]
        assert (split, record["difficulty"]) == (problem.split, problem.difficulty) and record["prompt"].startswith(
            problem.statement
        )
        cases = parse_test_cases(record["answer"])
        assert len(cases) >= 30
        completions.append(
            f"```python\n{next(iter(problem.solutions.values()))}```"
        )  # the first solution is a correct one
        answers.append(
            json.dumps([{"stdin": c.stdin, "expected": c.expected} for c in cases[:10]])
        )  # all were checked when generated
    verdicts = CodeTests(cpu_seconds=2, wall_seconds=4, workers=2).judge_many([""] * len(answers), completions, answers)
    assert [v.reason for v in verdicts] == ["pass"] * len(answers)
