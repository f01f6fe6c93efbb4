"""Throughput of the code sandbox, and its share of a tiny RL iteration.

    python tools/bench/sandbox.py [--programs 200 --workers N --iteration-s 1.10]

1. ``--programs`` trivial Python programs (start, read one test's stdin, print, verdict) through
   ``Sandbox.run_many`` with the pool: programs per second and the median latency of one program.
2. A full tiny-task batch: ``--prompts`` × ``--samples`` completions (16 × 8 = 128), each a trivial
   correct or incorrect Python program with 3 test cases, scored by ``run_many``. Its wall time
   divided by the tiny recipe's RL iteration time (``--iteration-s``) is ``share_of_iteration``:
   how much an iteration would grow if scoring were not overlapped with anything.

Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from k15.reward.sandbox import Sandbox, TestCase

ADD = "a, b = map(int, input().split())\nprint(a + b)"
SUBTRACT = "a, b = map(int, input().split())\nprint(a - b)"


def timed_run(sandbox: Sandbox, program: str, tests: list[TestCase], latencies: list[float]):
    start = time.perf_counter()
    result = sandbox.run(program, tests)
    latencies.append(time.perf_counter() - start)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None, help="default: CPU count")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--iteration-s", type=float, default=1.10, help="the tiny recipe's RL iteration time")
    args = parser.parse_args()
    sandbox = Sandbox(workers=args.workers)
    sandbox.run(ADD, [TestCase("1 2", "3")])  # warm the page cache

    one = [TestCase("1 2\n", "3\n")]
    latencies: list[float] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(sandbox.workers) as pool:  # the pool run_many uses, with a timer per program
        results = list(pool.map(lambda _: timed_run(sandbox, ADD, one, latencies), range(args.programs)))
    elapsed = time.perf_counter() - start
    assert all(r.verdicts == ["ok"] for r in results)

    tests = [TestCase("1 2\n", "3\n"), TestCase("10 -4\n", "6\n"), TestCase("7 7\n", "14\n")]
    batch = [(ADD if i % 2 else SUBTRACT, tests, "python") for i in range(args.prompts * args.samples)]
    start = time.perf_counter()
    scored = sandbox.run_many(batch)
    batch_seconds = time.perf_counter() - start
    assert [r.reward() for r in scored] == [float(i % 2) for i in range(len(batch))]

    print(json.dumps({
        "programs_per_s": round(args.programs / elapsed, 1),
        "median_latency_ms": round(1000 * statistics.median(latencies), 1),
        "isolation": sandbox.isolation,
        "workers": sandbox.workers,
        "batch_completions": len(batch),
        "tests_per_completion": len(tests),
        "batch_seconds": round(batch_seconds, 3),
        "share_of_iteration": round(batch_seconds / args.iteration_s, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
