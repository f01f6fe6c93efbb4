"""Throughput of the code sandbox, and its share of a tiny RL iteration.

    python tools/bench/sandbox.py [--programs 200 --workers N --iteration-s 1.10 --repeats 3]

1. ``--programs`` trivial Python programs (start, read one test's stdin, print, verdict) through
   the sandbox with ``run_many``'s pool: programs per second and the median latency of one program.
2. A full tiny-task batch: ``--prompts`` × ``--samples`` completions (16 × 8 = 128), each a trivial
   correct or incorrect Python program with 3 test cases, scored by ``run_many``, ``--repeats``
   times; the median wall time divided by the tiny recipe's RL iteration time (``--iteration-s``)
   is ``share_of_iteration``: how much an iteration would grow if scoring were not overlapped with
   anything. ``sandbox_cpu_ms_per_test`` is the CPU time the cells and their test processes spent
   per test (Linux /proc; it does not grow when other jobs crowd the machine, the wall time does),
   ``load_average`` what the machine was doing meanwhile.
3. The same batch in the same run with each program exec-ing a fresh ``python3 -S -I -B`` from the
   sandbox (``cold_batch_seconds``): the containment unchanged, the interpreter start-up that the
   warm cells save paid again. Skip it with ``--no-cold``.

Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from k15.reward.sandbox import CELLS, Sandbox, TestCase

ADD = "a, b = map(int, input().split())\nprint(a + b)"
SUBTRACT = "a, b = map(int, input().split())\nprint(a - b)"


def cold(program: str) -> str:
    """``program`` run by a freshly started interpreter, as the sandbox did before its cells were warm."""
    return f"import os\nos.execv('/usr/bin/python3', ['python3', '-S', '-I', '-B', '-c', {program!r}])"


def timed_run(sandbox: Sandbox, program: str, tests: list[TestCase], latencies: list[float]):
    start = time.perf_counter()
    result = sandbox.run(program, tests)
    latencies.append(time.perf_counter() - start)
    return result


def sandbox_cpu_seconds() -> float:
    """CPU time of the cells (each in its launcher's process group) and of the tests they reaped."""
    groups, ticks = {cell.group for cell in CELLS}, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups:  # pgrp
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def score_batch(sandbox: Sandbox, batch: list, repeats: int) -> tuple[float, float]:
    """Median wall seconds of ``run_many(batch)`` and the sandbox CPU seconds of one run."""
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, start = sandbox_cpu_seconds(), time.perf_counter()
        scored = sandbox.run_many(batch)
        walls.append(time.perf_counter() - start)
        cpus.append(sandbox_cpu_seconds() - cpu)
        assert [r.reward() for r in scored] == [float(i % 2) for i in range(len(batch))]
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=None, help="default: CPU count")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--iteration-s", type=float, default=1.10, help="the tiny recipe's RL iteration time")
    parser.add_argument("--repeats", type=int, default=3, help="batches scored; the median counts")
    parser.add_argument("--no-cold", action="store_true", help="skip the fresh-interpreter comparison")
    args = parser.parse_args()
    sandbox = Sandbox(workers=args.workers)
    load = os.getloadavg()[0]
    sandbox.run_many([(ADD, [TestCase("1 2", "3")], "python")] * sandbox.workers)  # a warm cell per worker

    one = [TestCase("1 2\n", "3\n")]
    latencies: list[float] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(sandbox.workers) as pool:  # the pool run_many uses, with a timer per program
        results = list(pool.map(lambda _: timed_run(sandbox, ADD, one, latencies), range(args.programs)))
    elapsed = time.perf_counter() - start
    assert all(r.verdicts == ["ok"] for r in results)

    tests = [TestCase("1 2\n", "3\n"), TestCase("10 -4\n", "6\n"), TestCase("7 7\n", "14\n")]
    completions = args.prompts * args.samples
    batch = [(ADD if i % 2 else SUBTRACT, tests, "python") for i in range(completions)]
    batch_seconds, cpu_seconds = score_batch(sandbox, batch, args.repeats)
    report = {
        "programs_per_s": round(args.programs / elapsed, 1),
        "median_latency_ms": round(1000 * statistics.median(latencies), 1),
        "isolation": sandbox.isolation,
        "workers": sandbox.workers,
        "batch_completions": completions,
        "tests_per_completion": len(tests),
        "batch_seconds": round(batch_seconds, 3),
        "share_of_iteration": round(batch_seconds / args.iteration_s, 2),
        "sandbox_cpu_ms_per_test": round(1000 * cpu_seconds / (completions * len(tests)), 2),
    }
    if not args.no_cold:
        cold_batch = [(cold(program), tests, language) for program, tests, language in batch]
        report["cold_batch_seconds"] = round(score_batch(sandbox, cold_batch, 1)[0], 3)
    report["load_average"] = round((load + os.getloadavg()[0]) / 2, 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
