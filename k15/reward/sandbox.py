"""Code rewards (paper §2.3.5): run an untrusted program on test cases, one verdict per test.

    reward = 1[every test's verdict is "ok"]            (mode "all", the paper's)
           = (# "ok") / (# tests)                       (mode "fraction")

Each test runs the program in a fresh process inside a "cell" (``k15/reward/cell.py``): a warm
Python interpreter already inside its own namespaces and bare read-only root, started by a fork
server (``k15/reward/isolation.py``, once per host process) and kept for the life of the host
process, one per thread that runs programs. For each test the cell forks a child that takes the
test's rlimits, a fresh working directory and a fresh unprivileged uid, then runs the Python program
in the inherited interpreter (no interpreter start-up) or execs the compiled C++ binary; the cell
enforces the wall clock and output cap and kills whatever the test left before it answers. Those
two files say what is and is not contained in each mode ("namespaces", else "rlimits-only") and
what a program can observe of the warm interpreter. This module is the host side: it sends a
program with all its tests' stdin to an idle cell in one request (never the expected outputs), and
turns the statuses and outputs of the reply into verdicts. A thread pool runs many programs at
once. Bad programs never raise; a broken sandbox does.

Verdicts, first match wins:
    output_limit   stdout or stderr passed ``output_bytes`` (the process is killed at once)
    timeout        the wall clock passed ``wall_seconds``, or the CPU limit's SIGXCPU/SIGKILL came
    memory         a failed allocation: Python's "MemoryError" or C++'s "std::bad_alloc" on stderr.
                   RLIMIT_AS makes allocations fail rather than the OOM killer strike; a C program
                   that ignores a NULL from malloc segfaults instead and gets runtime_error.
    runtime_error  killed by any other signal, or a non-zero exit status
    compile_error  (C++) g++ failed or passed its own limits; every test gets it
    ok / wrong     exit 0; stdout compared with the expected output after removing trailing
                   whitespace on each line and trailing blank lines (leading spaces, blank lines in
                   the middle and everything else count)
"""

from __future__ import annotations

import atexit
import marshal
import os
import queue
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LAUNCHER = str(Path(__file__).with_name("isolation.py"))
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/box", "TMPDIR": "/box"}
MEMORY_MARKERS = (b"MemoryError", b"std::bad_alloc", b"Cannot allocate memory")
# One uid per running program, so RLIMIT_NPROC (counted per uid) is its own; each host process
# (e.g. each test worker, each rank) takes its own block of 256, keyed by its pid.
SANDBOX_UIDS = range(1_000_000 + (os.getpid() % 4096) * 256, 1_000_000 + (os.getpid() % 4096 + 1) * 256)
UIDS = queue.Queue()
for _uid in SANDBOX_UIDS:
    UIDS.put(_uid)


@dataclass(frozen=True)
class TestCase:
    """stdin fed to the program, and the stdout it must print."""

    stdin: str
    expected: str


@dataclass(frozen=True)
class Outcome:
    """What one contained process did."""

    stdout: bytes
    stderr: bytes
    exit: int | None  # None when killed by a signal
    signal: int | None
    cpu_seconds: float
    wall_exceeded: bool = False
    output_exceeded: bool = False


@dataclass(frozen=True)
class Result:
    """Per-test verdicts of one program, in test order, and what it printed on each test."""

    verdicts: list[str]
    stdouts: list[str]  # decoded stdout per test ("" when it never ran: compile_error)

    def reward(self, mode: str = "all") -> float:
        passed = sum(v == "ok" for v in self.verdicts)
        if mode == "all":
            return float(passed == len(self.verdicts))
        if mode == "fraction":
            return passed / len(self.verdicts) if self.verdicts else 0.0
        raise ValueError(f"unknown reward mode {mode!r}")


def canonical_output(text: str) -> str:
    """Trailing whitespace of each line and trailing blank lines removed."""
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


def same_output(actual: str, expected: str) -> bool:
    return canonical_output(actual) == canonical_output(expected)


VERDICTS = ("ok", "wrong", "timeout", "memory", "runtime_error", "output_limit", "compile_error")


def verdict(outcome: Outcome, expected: str, cpu_seconds: float) -> str:
    """The verdict of one run; see the module docstring for the order."""
    if outcome.output_exceeded:
        return "output_limit"
    cpu_killed = outcome.signal == signal.SIGXCPU or (
        outcome.signal == signal.SIGKILL and outcome.cpu_seconds >= cpu_seconds
    )
    if outcome.wall_exceeded or cpu_killed:
        return "timeout"
    if outcome.exit != 0 and any(marker in outcome.stderr for marker in MEMORY_MARKERS):
        return "memory"
    if outcome.exit != 0:
        return "runtime_error"
    return "ok" if same_output(outcome.stdout.decode(errors="replace"), expected) else "wrong"


class Launcher:
    """The fork server (``isolation.py``), started once per host process; it starts the cells."""

    def __init__(self):
        self.channel, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.server = subprocess.Popen(
            [sys.executable, "-S", "-I", LAUNCHER, str(server_end.fileno())],
            pass_fds=(server_end.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True, env={},
        )  # fmt: skip
        server_end.close()
        self.lock = threading.Lock()

    def start(self, spec: dict, fds: list[int]) -> int:
        """Start one cell with fds (requests, replies, errors); returns its process group."""
        with self.lock:
            socket.send_fds(self.channel, [marshal.dumps(spec)], fds)
            return marshal.loads(self.channel.recv(64))


@cache
def launcher() -> Launcher:
    """The shared server; first made by ``isolation_mode`` on the thread that builds a Sandbox."""
    return Launcher()


class Cell:
    """One warm contained interpreter (``cell.py``) and the pipes to it; one thread uses it at a time."""

    def __init__(self, mode: str):
        python, binds = default_python()
        self.mode, self.home = mode, tempfile.mkdtemp(prefix="k15-cell-")
        os.chmod(self.home, 0o711)  # "rlimits-only": a test's uid must reach its folder inside
        requests, self.requests = os.pipe()
        self.replies, replies = os.pipe()
        self.errors, errors = os.pipe()
        os.set_blocking(self.errors, False)
        spec = {"mode": mode, "home": self.home, "python": python, "binds": binds, "env": ENV}
        try:
            self.group = launcher().start(spec, [requests, replies, errors])
        finally:
            for fd in (requests, replies, errors):
                os.close(fd)

    def ask(self, job: dict, payload: list[bytes], patience: float) -> tuple[dict, bytes]:
        """Send one program's job, return the cell's reply and the tests' stdout/stderr bytes."""
        header = marshal.dumps(job)
        deadline = time.monotonic() + patience
        try:
            write_all(self.requests, b"".join([len(header).to_bytes(4, "little"), header, *payload]))
            reply = marshal.loads(self.read(int.from_bytes(self.read(4, deadline), "little"), deadline))
            outputs = self.read(sum(run[-1] + run[-2] for run in reply["runs"]), deadline)
        except (OSError, EOFError, TimeoutError) as error:
            raise RuntimeError(f"sandbox cell failed ({error!r}): {self.failure()}") from error
        if self.mode == "rlimits-only":  # the tests' folders; "namespaces" unmounts its own
            for name in os.listdir(self.home):
                shutil.rmtree(f"{self.home}/{name}", ignore_errors=True)
        return reply, outputs

    def read(self, size: int, deadline: float) -> bytes:
        data, poller = bytearray(), select.poll()
        poller.register(self.replies, select.POLLIN)
        while len(data) < size:
            if not poller.poll(max(deadline - time.monotonic(), 0) * 1000):
                raise TimeoutError("no reply in time")
            chunk = os.read(self.replies, size - len(data))
            if not chunk:
                raise EOFError("the cell exited")
            data += chunk
        return bytes(data)

    def failure(self) -> str:
        try:
            return os.read(self.errors, 1 << 16).decode(errors="replace")[-2000:]
        except BlockingIOError:
            return ""

    def close(self) -> None:
        try:
            os.killpg(self.group, signal.SIGKILL)  # the launcher and the cell; the cell's namespace with it
        except ProcessLookupError:
            pass
        for fd in (self.requests, self.replies, self.errors):
            os.close(fd)
        shutil.rmtree(self.home, ignore_errors=True)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# Idle cells per mode, and every cell made, closed when the host process exits
IDLE = {"namespaces": queue.SimpleQueue(), "rlimits-only": queue.SimpleQueue()}
CELLS: list[Cell] = []


def borrow(mode: str) -> Cell:
    try:
        return IDLE[mode].get_nowait()
    except queue.Empty:
        cell = Cell(mode)
        CELLS.append(cell)
        return cell


@atexit.register
def close_cells(owner: int = os.getpid()) -> None:
    if os.getpid() == owner:  # not in a forked copy of this process: the cells are not its own
        for cell in CELLS:
            cell.close()


def run_on_cell(mode: str, job: dict, payload: list[bytes], patience: float) -> tuple[dict, bytes]:
    """One job on an idle cell (a new one when none is idle); a cell that failed is closed."""
    cell = borrow(mode)
    try:
        reply = cell.ask(job, payload, patience)
    except RuntimeError:
        CELLS.remove(cell)
        cell.close()
        raise
    IDLE[mode].put(cell)
    return reply


def namespace_probe() -> str | None:
    """Why a namespaced cell cannot run a trivial program here, or None when it can."""
    uid = UIDS.get()
    limits = {"cpu": 2, "memory": 1 << 28, "file": 1 << 20, "processes": 4, "open_files": 16}
    job = {
        "uid": uid,
        "language": "python",
        "program": 9,
        "stdins": [0],
        "limits": limits,
        "wall": 10.0,
        "output_bytes": 64,
        "scratch": 1 << 20,
    }
    try:
        reply, outputs = run_on_cell("namespaces", job, [b"print(42)"], 20.0)
        return (
            None
            if reply["runs"][0][0] == 0 and outputs.startswith(b"42")
            else f"the probe answered {reply['runs']} / {outputs[:200]!r}"
        )
    except (OSError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        UIDS.put(uid)


@cache
def isolation_mode() -> str:
    """The isolation this machine allows, probed once: "namespaces", else "rlimits-only" (with a warning saying why)."""
    failure = namespace_probe()
    if failure is not None:
        warnings.warn(
            f"code sandbox: no namespaces here ({failure}); falling back to rlimits-only, which contains trusted "
            "code only",
            stacklevel=2,
        )
    return "namespaces" if failure is None else "rlimits-only"


def default_python() -> tuple[str, list[str]]:
    """(interpreter, folders to bind): the system's python3 under /usr, else ours with its prefix."""
    if os.path.exists("/usr/bin/python3"):
        return "/usr/bin/python3", []
    return os.path.realpath(sys._base_executable), [sys.base_prefix]


class Sandbox:
    """Runs untrusted Python or C++ on stdin → stdout test cases.

    Args:
        cpu_seconds: CPU time per test run (RLIMIT_CPU).
        memory_mb: address space per process (RLIMIT_AS).
        wall_seconds: wall clock per test run, start-up included.
        output_bytes: cap on stdout and on stderr; passing it ends the run with output_limit.
        max_processes: processes the program's uid may have (RLIMIT_NPROC); stops fork bombs.
        max_open_files: RLIMIT_NOFILE.
        file_bytes: largest file the program may write (RLIMIT_FSIZE).
        scratch_bytes: size of the working directory (a tmpfs) in "namespaces" mode.
        compile_seconds: CPU and (×2) wall seconds for g++.
        compile_memory_mb: address space for g++.
        workers: programs run at once by ``run_many`` (default: CPU count).
    """

    def __init__(
        self,
        cpu_seconds: int = 2,
        memory_mb: int = 256,
        wall_seconds: float = 4.0,
        output_bytes: int = 64_000,
        max_processes: int = 16,
        max_open_files: int = 64,
        file_bytes: int = 1_000_000,
        scratch_bytes: int = 16_000_000,
        compile_seconds: int = 10,
        compile_memory_mb: int = 2048,
        workers: int | None = None,
    ):
        self.cpu_seconds, self.memory_mb, self.wall_seconds, self.output_bytes = (
            cpu_seconds,
            memory_mb,
            wall_seconds,
            output_bytes,
        )
        self.max_processes, self.max_open_files, self.file_bytes, self.scratch_bytes = (
            max_processes,
            max_open_files,
            file_bytes,
            scratch_bytes,
        )
        self.compile_seconds, self.compile_memory_mb = compile_seconds, compile_memory_mb
        self.workers = workers or os.cpu_count() or 1
        self.isolation = isolation_mode()

    def limits(self, cpu_seconds: int, memory_mb: int) -> dict:
        return {
            "cpu": cpu_seconds,
            "memory": memory_mb << 20,
            "file": self.file_bytes,
            "processes": self.max_processes,
            "open_files": self.max_open_files,
        }

    def run(self, program: str, tests: list[TestCase], language: str = "python") -> Result:
        """Verdicts of ``program`` on each test; never raises for a bad program."""
        if language not in ("python", "cpp"):
            raise ValueError(f"unknown language {language!r}")
        source, stdins = program.encode(), [t.stdin.encode() for t in tests]
        compile_ = {
            "argv": ["/usr/bin/g++", "-O2", "-std=c++17", "-pipe", "-o", "main", "main.cpp"],
            "wall": 2 * self.compile_seconds,
        }
        compile_["limits"] = self.limits(self.compile_seconds, self.compile_memory_mb)
        uid = UIDS.get()
        job = {
            "uid": uid, "language": language, "program": len(source), "stdins": [len(s) for s in stdins],
            "limits": self.limits(self.cpu_seconds, self.memory_mb), "wall": self.wall_seconds,
            "output_bytes": self.output_bytes, "scratch": self.scratch_bytes, "compile": compile_,
        }  # fmt: skip
        patience = (
            10 + compile_["wall"] + len(tests) * (self.wall_seconds + 2)
        )  # the cell keeps time; this is for a broken one
        try:
            reply, outputs = run_on_cell(self.isolation, job, [source, *stdins], patience)
        finally:
            UIDS.put(uid)  # the cell replies only when nothing of this uid runs any more (or is dead)
        if not reply["compiled"]:
            return Result(["compile_error"] * len(tests), [""] * len(tests))
        outcomes, position = [], 0
        for code, signal_, cpu, wall_exceeded, output_exceeded, stdout_bytes, stderr_bytes in reply["runs"]:
            stdout = outputs[position : position + min(stdout_bytes, self.output_bytes)]
            stderr = outputs[position + stdout_bytes : position + stdout_bytes + min(stderr_bytes, self.output_bytes)]
            outcomes.append(Outcome(stdout, stderr, code, signal_, cpu, wall_exceeded, output_exceeded))
            position += stdout_bytes + stderr_bytes
        return Result(
            [verdict(outcome, t.expected, self.cpu_seconds) for outcome, t in zip(outcomes, tests, strict=True)],
            [outcome.stdout.decode(errors="replace") for outcome in outcomes],
        )

    def run_many(self, jobs: list[tuple[str, list[TestCase], str]]) -> list[Result]:
        """``run`` on each (program, tests, language), ``workers`` at a time, in order."""
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda job: self.run(*job), jobs))
