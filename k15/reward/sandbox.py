"""Code rewards (paper §2.3.5): run an untrusted program on test cases, one verdict per test.

    reward = 1[every test's verdict is "ok"]            (mode "all", the paper's)
           = (# "ok") / (# tests)                       (mode "fraction")

Each test runs the program in a fresh process contained by ``k15/reward/isolation.py``: a fork
server started once per host process, which forks a launcher per run that builds namespaces, a bare
read-only root, rlimits and an unprivileged uid (its docstring says what is and is not contained in
each mode). This module is the host side: it asks the server for a run, feeds stdin, reads
stdout/stderr with a cap, enforces the wall clock, and turns what happened into a verdict. A thread
pool runs many programs at once. Bad programs never raise; a broken sandbox does.

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

import marshal
import os
import queue
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
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


def normalise(text: str) -> str:
    """Trailing whitespace of each line and trailing blank lines removed."""
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


def same_output(actual: str, expected: str) -> bool:
    return normalise(actual) == normalise(expected)


def verdict(outcome: Outcome, expected: str, cpu_seconds: float) -> str:
    """The verdict of one run; see the module docstring for the order."""
    if outcome.output_exceeded:
        return "output_limit"
    cpu_killed = outcome.signal == signal.SIGXCPU or (outcome.signal == signal.SIGKILL and outcome.cpu_seconds >= cpu_seconds)
    if outcome.wall_exceeded or cpu_killed:
        return "timeout"
    if outcome.exit != 0 and any(marker in outcome.stderr for marker in MEMORY_MARKERS):
        return "memory"
    if outcome.exit != 0:
        return "runtime_error"
    return "ok" if same_output(outcome.stdout.decode(errors="replace"), expected) else "wrong"


class Launcher:
    """The fork server (``isolation.py``), started once per host process, shared by all threads."""

    def __init__(self):
        self.channel, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.server = subprocess.Popen(
            [sys.executable, "-S", "-I", LAUNCHER, str(server_end.fileno())],
            pass_fds=(server_end.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True, env={},
        )  # fmt: skip
        server_end.close()
        self.lock = threading.Lock()

    def start(self, spec: dict, fds: list[int]) -> int:
        """Start one run with fds (stdin, stdout, stderr, status); returns its process group."""
        with self.lock:
            socket.send_fds(self.channel, [marshal.dumps(spec)], fds)
            return marshal.loads(self.channel.recv(64))


@cache
def launcher() -> Launcher:
    """The shared server; first made by ``isolation_mode`` on the thread that builds a Sandbox."""
    return Launcher()


def contain(spec: dict, stdin: bytes, wall_seconds: float, output_bytes: int) -> Outcome:
    """One run: feed stdin, read stdout/stderr/status until all close, the cap or the deadline.

    On the deadline or the cap the run's process group (launcher and init) is killed; init's
    death empties the pid namespace."""
    pipes = [os.pipe() for _ in range(4)]  # stdin, stdout, stderr, status: (read, write)
    deadline = time.monotonic() + wall_seconds
    theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
    try:
        group = launcher().start(spec, theirs)
    except OSError:
        for fd in (pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]):
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    stdin_fd, readers = pipes[0][1], {pipes[1][0]: bytearray(), pipes[2][0]: bytearray(), pipes[3][0]: bytearray()}
    wall_exceeded = output_exceeded = False
    with selectors.DefaultSelector() as selector:
        for fd in readers:
            selector.register(fd, selectors.EVENT_READ)
        if stdin:
            os.set_blocking(stdin_fd, False)
            selector.register(stdin_fd, selectors.EVENT_WRITE)
        else:
            os.close(stdin_fd)
        view = memoryview(stdin)
        while selector.get_map() and not (wall_exceeded or output_exceeded):
            left = deadline - time.monotonic()
            wall_exceeded = left <= 0
            for key, _ in selector.select(max(left, 0)):
                if key.fd == stdin_fd:
                    try:
                        view = view[os.write(stdin_fd, view[:65536]) :]
                    except BrokenPipeError:  # the program stopped reading: its business
                        view = view[:0]
                    if not view:
                        selector.unregister(stdin_fd)
                        os.close(stdin_fd)
                    continue
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fd)
                    continue
                readers[key.fd] += data
                output_exceeded = output_exceeded or len(readers[key.fd]) > output_bytes
        if stdin_fd in selector.get_map():
            os.close(stdin_fd)
    for fd in readers:
        os.close(fd)
    stdout, stderr, status = (bytes(chunks) for chunks in readers.values())
    if wall_exceeded or output_exceeded:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:  # it ended on its own meanwhile
            pass
    wait_until_gone(group)
    if wall_exceeded or output_exceeded:
        return Outcome(stdout[:output_bytes], stderr[:output_bytes], None, signal.SIGKILL, 0.0, wall_exceeded, output_exceeded)
    if not status:
        raise RuntimeError(f"sandbox launcher failed: {stderr[-2000:].decode(errors='replace')}")
    report = marshal.loads(status)
    return Outcome(stdout, stderr, report.get("exit"), report.get("signal"), report["cpu"])


def wait_until_gone(group: int, patience: float = 5.0) -> None:
    """Until the run's process group is reaped, so nothing outlives its verdict.

    The launcher and init stay in the group; init is reaped only after the kernel has killed
    the rest of its pid namespace (the server, a child subreaper ignoring SIGCHLD, reaps them)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.001)


@cache
def isolation_mode() -> str:
    """The isolation this machine allows, probed once: "namespaces", else "rlimits-only"."""
    box = tempfile.mkdtemp(prefix="k15-sandbox-")
    try:
        spec = {"mode": "namespaces", "box": box, "argv": ["/usr/bin/true"], "env": {}, "uid": UIDS.queue[0], "binds": [], "scratch": 1 << 20, "copy_out": []}
        spec["limits"] = {"cpu": 2, "memory": 1 << 28, "file": 1 << 20, "processes": 4, "open_files": 16}
        outcome = contain(spec, b"", 10.0, 4096)
        return "namespaces" if outcome.exit == 0 else "rlimits-only"
    except (OSError, RuntimeError):
        return "rlimits-only"
    finally:
        shutil.rmtree(box, ignore_errors=True)


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
        self.cpu_seconds, self.memory_mb, self.wall_seconds, self.output_bytes = cpu_seconds, memory_mb, wall_seconds, output_bytes
        self.max_processes, self.max_open_files, self.file_bytes, self.scratch_bytes = max_processes, max_open_files, file_bytes, scratch_bytes
        self.compile_seconds, self.compile_memory_mb = compile_seconds, compile_memory_mb
        self.workers = workers or os.cpu_count() or 1
        self.isolation = isolation_mode()
        self.python, self.binds = default_python()

    def spec(self, box: str, uid: int, argv: list[str], cpu: int, memory_mb: int, copy_out: list[str] = ()) -> dict:
        limits = {"cpu": cpu, "memory": memory_mb << 20, "file": self.file_bytes, "processes": self.max_processes, "open_files": self.max_open_files}
        return {
            "mode": self.isolation, "box": box, "argv": argv, "env": ENV, "uid": uid, "binds": self.binds,
            "scratch": self.scratch_bytes, "copy_out": list(copy_out), "limits": limits,
        }  # fmt: skip

    def run(self, program: str, tests: list[TestCase], language: str = "python") -> Result:
        """Verdicts of ``program`` on each test; never raises for a bad program."""
        uid, box = UIDS.get(), tempfile.mkdtemp(prefix="k15-sandbox-")
        try:
            if language == "python":
                Path(box, "main.py").write_text(program)
                argv = [self.python, "-S", "-I", "-B", "main.py"]  # stdlib only, no env: starts ~5 ms sooner
            elif language == "cpp":
                Path(box, "main.cpp").write_text(program)
                if not self.compile(box, uid):
                    return Result(["compile_error"] * len(tests), [""] * len(tests))
                os.remove(f"{box}/main.cpp")
                argv = ["/box/main" if self.isolation == "namespaces" else f"{box}/main"]
            else:
                raise ValueError(f"unknown language {language!r}")
            spec = self.spec(box, uid, argv, self.cpu_seconds, self.memory_mb)
            outcomes = [contain(spec, t.stdin.encode(), self.wall_seconds, self.output_bytes) for t in tests]
            return Result(
                [verdict(outcome, t.expected, self.cpu_seconds) for outcome, t in zip(outcomes, tests, strict=True)],
                [outcome.stdout.decode(errors="replace") for outcome in outcomes],
            )
        finally:
            shutil.rmtree(box, ignore_errors=True)
            UIDS.put(uid)

    def compile(self, box: str, uid: int) -> bool:
        """g++ -O2 -std=c++17 inside the same containment; True when ``main`` was produced."""
        argv = ["/usr/bin/g++", "-O2", "-std=c++17", "-pipe", "-o", "main", "main.cpp"]
        spec = self.spec(box, uid, argv, self.compile_seconds, self.compile_memory_mb, copy_out=["main"])
        outcome = contain(spec, b"", 2 * self.compile_seconds, self.output_bytes)
        return outcome.exit == 0 and os.path.isfile(f"{box}/main")

    def run_many(self, jobs: list[tuple[str, list[TestCase], str]]) -> list[Result]:
        """``run`` on each (program, tests, language), ``workers`` at a time, in order."""
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda job: self.run(*job), jobs))
