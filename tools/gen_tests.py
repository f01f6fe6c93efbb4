"""Generate and filter test cases for the programming problems under problems/ (k1.5 §2.3.5) and
write them as WebDataset shards of code RL prompts.

    python tools/gen_tests.py --problems problems --out shards/code [--inputs 50 --agree 0.7 --pass 0.9 --seed 0]

Each problem's generator makes ``--inputs`` inputs; an input is kept when ≥ ``--agree`` of the
reference solutions print the same output, and a problem when ≥ ``--pass`` of them pass every kept
test (k15/reward/testgen.py has the rules). Kept problems go to ``<out>/train-000000.tar.gz``, or
``<out>/heldout-000000.tar.gz`` for those whose statement says ``split: heldout``; one record each:

    {"prompt": statement + INSTRUCTION, "answer": JSON [{"stdin", "expected"}, …], "difficulty": 1..5,
     "name": the problem's folder, "domain": "code", "source": "k15.problems"}

A line per problem reports what happened; the last line is one JSON object with the totals (both on stdout; a
progress bar over the problems goes to stderr).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from k15.data.shards import write_shards
from k15.reward.sandbox import Sandbox, TestCase
from k15.reward.testgen import Problem, Report, generate_tests, load_problems

INSTRUCTION = (
    "\n\nWrite a Python 3 program that reads the input from standard input and prints the answer to standard output. "
    "Give the complete program in one ```python code block."
)


def record(problem: Problem, tests: list[TestCase]) -> dict:
    """The shard record of a kept problem."""
    answer = json.dumps([dataclasses.asdict(t) for t in tests])
    return {"prompt": problem.statement + INSTRUCTION, "answer": answer, "difficulty": problem.difficulty,
            "name": problem.name, "domain": "code", "source": "k15.problems"}  # fmt: skip


def describe(report: Report) -> str:
    """One report line: counts, the verdict, and the solutions that missed tests."""
    missed = ", ".join(
        f"{name} {count}/{report.tests}" for name, count in report.passed.items() if count < report.tests
    )
    return (
        f"{report.name:<18} inputs {report.generated} generated, {report.distinct} distinct, {report.tests} kept; "
        f"{'KEPT' if report.kept else 'DROPPED'}: {report.reason}" + (f"; short: {missed}" if missed else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=Path, default=Path("problems"), help="folder of problem folders")
    parser.add_argument("--out", default="shards/code")
    parser.add_argument("--inputs", type=int, default=50, help="generator runs per problem")
    parser.add_argument("--agree", type=float, default=0.7, help="share of solutions that must agree to keep an input")
    parser.add_argument(
        "--pass", dest="min_pass", type=float, default=0.9, help="share of solutions that must pass to keep a problem"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="programs run at once (default: CPU count)")
    args = parser.parse_args()

    start, sandbox = time.monotonic(), Sandbox(workers=args.workers)
    splits: dict[str, list[dict]] = {"train": [], "heldout": []}
    reports = []
    for problem in tqdm(load_problems(args.problems), desc="problems", unit="problem"):
        tests, report = generate_tests(problem, sandbox, args.inputs, args.agree, args.min_pass, args.seed)
        tqdm.write(describe(report), file=sys.stdout)  # above the bar, which tqdm redraws
        reports.append(report)
        if report.kept:
            splits[problem.split].append(record(problem, tests))
    written = {
        split: write_shards(records, f"{args.out}/{split}-%06d.tar.gz") for split, records in splits.items() if records
    }
    totals = {
        "problems_kept": sum(r.kept for r in reports),
        "problems_dropped": sum(not r.kept for r in reports),
        "inputs_generated": sum(r.generated for r in reports),
        "inputs_distinct": sum(r.distinct for r in reports),
        "inputs_kept": sum(r.tests for r in reports),
        "tests_written": sum(len(json.loads(x["answer"])) for records in splits.values() for x in records),
        "records": written,
        "seconds": round(time.monotonic() - start, 1),
    }
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
