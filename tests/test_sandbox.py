"""The code sandbox against hostile programs (real processes, no mocks), and its verdicts and rewards.

Each hostile program must end with the right verdict inside its limits, leave no process behind
and change nothing on the host. Programs that probe a boundary print "blocked" when it held, so
an "ok" verdict against the expected "blocked" lines proves the boundary held.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k15.reward.sandbox import SANDBOX_UIDS, UIDS, Outcome, Result, Sandbox, namespace_probe, same_output, verdict
from k15.reward.sandbox import TestCase as Case  # a name pytest would try to collect

ROOT = Path(__file__).resolve().parents[1]
ADD = [Case("1 2\n", "3\n"), Case("10 -4\n", "6\n"), Case("0 0\n", "0\n")]
ONE = [Case("", "blocked\n")]


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(cpu_seconds=1, memory_mb=256, wall_seconds=2.0, output_bytes=10_000, max_processes=16)


# What isolation.py unshares; it makes no user namespace, so this needs root (CAP_SYS_ADMIN)
UNSHARE_PROBE = """import ctypes, os, sys
flags = 0x20000 | 0x4000000 | 0x8000000 | 0x20000000 | 0x40000000  # mount, uts, ipc, pid, net
if ctypes.CDLL(None, use_errno=True).unshare(flags) != 0:
    sys.exit(os.strerror(ctypes.get_errno()))"""


def namespaces_impossible() -> str | None:
    """Why this machine cannot give the sandbox its namespaces, or None when it can."""
    if sys.platform != "linux":
        return f"the sandbox's namespaces are Linux-only; this is {sys.platform}"
    if os.geteuid() != 0:
        return (
            "the sandbox's namespaces need root: isolation.py unshares mount/pid/net/ipc/uts namespaces "
            "without a user namespace, which takes CAP_SYS_ADMIN (unprivileged user namespaces would not help)"
        )
    probe = subprocess.run(
        [sys.executable, "-S", "-I", "-c", UNSHARE_PROBE], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        return (
            f"root, but unshare(mount|pid|net|ipc|uts) is refused here ({probe.stderr.strip()[-200:]}): "
            "a container without CAP_SYS_ADMIN or with a seccomp filter"
        )
    return None


@pytest.fixture(scope="module")
def contained(sandbox) -> Sandbox:
    """The sandbox, which must run in "namespaces" mode wherever this machine allows it: a broken
    namespace setup fails these tests instead of silently skipping them."""
    if sandbox.isolation != "namespaces":
        reason = namespaces_impossible()
        if reason is not None:
            pytest.skip(f"containment tests need namespaces: {reason}")
        pytest.fail(
            f"the sandbox fell back to isolation={sandbox.isolation!r} although this machine allows namespaces "
            f"(Linux, root, unshare works): the cell setup in k15/reward/isolation.py or cell.py failed. "
            f"Its probe says: {namespace_probe()}",
            pytrace=False,
        )
    return sandbox


def sandbox_processes() -> list[int]:
    """Host pids of processes running as one of this process's sandbox uids (other test workers
    run sandboxes of their own under other uids)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            uid_line = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) in SANDBOX_UIDS:
            pids.append(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    assert sandbox_processes() == []  # checked at once: run returns only after its processes are reaped


def blocked(*attempts: str) -> str:
    """A program that tries each statement and prints "blocked" for each one that raised."""
    lines = ["import os, socket, sys"]
    for attempt in attempts:
        lines += ["try:", f"    {attempt}", "    print('escaped')", "except Exception:", "    print('blocked')"]
    return "\n".join(lines)


# ---- hostile programs ------------------------------------------------------------------------


def test_fork_bomb_times_out(sandbox):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    assert sandbox.run(bomb, ONE).verdicts == ["timeout"]


def test_infinite_loop_times_out(sandbox):
    start = time.monotonic()
    assert sandbox.run("while True:\n    pass", ONE).verdicts == ["timeout"]
    assert time.monotonic() - start < 10  # killed by the clock (loose: CI machines are noisy), not left to run


def test_raising_own_limits_fails(sandbox):
    program = (
        "import resource\ntry:\n    resource.setrlimit(resource.RLIMIT_CPU, (-1, -1))\nexcept Exception:\n    pass\n"
        "while True:\n    pass"
    )
    assert sandbox.run(program, ONE).verdicts == ["timeout"]


@pytest.mark.parametrize(
    "program", ["x = bytearray(10**10)", "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))"]
)
def test_memory_bomb_is_memory(sandbox, program):
    assert sandbox.run(program, ONE).verdicts == ["memory"]


def test_huge_stdout_is_cut(sandbox):
    assert sandbox.run("while True:\n    print('x' * 1000)", ONE).verdicts == ["output_limit"]
    assert sandbox.run("import sys\nwhile True:\n    sys.stderr.write('x' * 1000)", ONE).verdicts == ["output_limit"]


def test_writes_outside_the_work_dir_stay_inside(contained):
    marker = f"k15_escape_{uuid.uuid4().hex}"
    targets = [f"/tmp/{marker}", f"{ROOT}/{marker}", f"/root/{marker}"]
    program = (
        "\n".join(f"try:\n    open({t!r}, 'w').write('x')\nexcept Exception:\n    pass" for t in targets)
        + "\nprint('done')"
    )
    assert contained.run(program, [Case("", "done")]).verdicts == ["ok"]
    assert not any(os.path.exists(t) for t in targets)


def test_reads_outside_are_blocked(contained):
    secrets = [f"{ROOT}/README.md", f"{ROOT}/k15/reward/sandbox.py", "/etc/passwd", "/root/.bashrc", "/proc/1/environ"]
    program = blocked(*(f"sys.stdout.write(open({path!r}).read()[:0])" for path in secrets), "os.listdir('/work')")
    assert contained.run(program, [Case("", "blocked\n" * (len(secrets) + 1))]).verdicts == ["ok"]


def test_network_is_unreachable(contained):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        program = blocked(
            "socket.create_connection(('1.1.1.1', 53), timeout=1)",
            f"socket.create_connection(('127.0.0.1', {port}), timeout=1)",
            "socket.getaddrinfo('example.com', 80)",
        )
        assert contained.run(program, [Case("", "blocked\n" * 3)]).verdicts == ["ok"]
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected


def test_shell_is_contained(contained):
    marker = f"k15_escape_{uuid.uuid4().hex}"
    program = f"import os\nos.system(\"sh -c 'echo hi > /tmp/{marker}; echo hi > {ROOT}/{marker}'\")\nprint('done')"
    assert contained.run(program, [Case("", "done")]).verdicts == ["ok"]
    assert not os.path.exists(f"/tmp/{marker}") and not os.path.exists(f"{ROOT}/{marker}")


def test_killing_parent_and_everyone_hurts_nobody(contained):
    # canaries on the host: one as root, one as the very uid the next run will get
    canaries = [
        subprocess.Popen(["sleep", "30"]),
        subprocess.Popen(["sleep", "30"], user=UIDS.queue[0], group=UIDS.queue[0]),
    ]
    try:
        # kill(-1) reaches no one: the pid namespace holds only root's init and the program itself
        program = blocked("os.kill(os.getppid(), 9)", "os.kill(1, 9)", "os.kill(-1, 9)") + "\nprint('alive')"
        assert contained.run(program, [Case("", "blocked\n" * 3 + "alive")]).verdicts == ["ok"]
        assert all(canary.poll() is None for canary in canaries)
    finally:
        for canary in canaries:
            canary.kill()
            canary.wait()


@pytest.mark.parametrize("detach", ["", "os.setsid()"])
def test_background_processes_die_with_the_verdict(contained, detach):
    marker = f"k15_sleeper_{uuid.uuid4().hex}"
    program = f"""import os, sys
if os.fork() == 0:
    {detach or "pass"}
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)  # {marker}'])
    os._exit(0)
print('started')"""
    assert contained.run(program, [Case("", "started")]).verdicts == ["ok"]
    for cmdline in Path("/proc").glob("*/cmdline"):
        try:
            assert marker not in cmdline.read_text()
        except OSError:
            pass


def test_closing_or_redirecting_stdio(sandbox):
    assert sandbox.run("import os\nos.close(1)\nos.close(2)", ONE).verdicts == ["wrong"]
    assert sandbox.run("import os, sys\nos.dup2(2, 1)\nprint('blocked')", ONE).verdicts == ["wrong"]
    assert sandbox.run("import os\nos.close(0)\nos.close(1)\nwhile True:\n    pass", ONE).verdicts == ["timeout"]


def test_no_privileges_left(contained):
    """Root's powers are gone: no setuid back, no chroot, no device nodes, no mounts."""
    program = blocked(
        "os.setuid(0)",
        "os.chroot('/box')",
        "os.mknod('/box/null', 0o20666, os.makedev(1, 3))",
        "import ctypes; assert ctypes.CDLL(None).mount(b'none', b'/box', b'tmpfs', 0, None) == 0",
    )
    assert contained.run(program, [Case("", "blocked\n" * 4)]).verdicts == ["ok"]


def test_probe_of_own_sandbox(contained):
    """What the program sees: an unprivileged uid, no capabilities, an empty-ish root."""
    program = (
        "import os\nprint(os.getuid() != 0, os.getgid() != 0, sorted(os.listdir('/')))\n"
        "print(open('/proc/self/status').read() if os.path.exists('/proc') else 'no proc')"
    )
    expected = "True True ['bin', 'box', 'dev', 'lib', 'lib64', 'sbin', 'tmp', 'usr']\nno proc"
    assert contained.run(program, [Case("", expected)]).verdicts == ["ok"]


def test_each_test_starts_clean(contained):
    """Tests share a warm cell: none sees files or processes the one before it left behind."""
    program = """import os, time
try:
    os.kill(-1, 0)  # reaches any other process of our uid
    print('company')
except ProcessLookupError:
    print('alone')
print(sorted(os.listdir('.')), sorted(os.listdir('/tmp')))
open('left.txt', 'w').write('x')
open('/tmp/left2.txt', 'w').write('x')
if os.fork() == 0:
    os.setsid()
    time.sleep(30)"""
    clean = "alone\n['main.py'] ['main.py']"
    assert contained.run(program, [Case("", clean)] * 3).verdicts == ["ok"] * 3
    assert contained.run("import os\nprint(os.listdir('.'))", [Case("", "['main.py']")]).verdicts == ["ok"]


def test_ipc_objects_cannot_be_made(contained):
    """System V IPC objects and POSIX message queues would outlive a test in the cell's namespace."""
    calls = [
        "shmget(4242, 4096, 0o1666)",
        "msgget(4242, 0o1666)",
        "semget(4242, 1, 0o1666)",
        "mq_open(b'/k15', 0o102, 0o666, None)",
    ]
    program = blocked(*(f"import ctypes; assert ctypes.CDLL(None).{call} != -1" for call in calls))
    assert contained.run(program, [Case("", "blocked\n" * len(calls))]).verdicts == ["ok"]


def test_other_tests_stdin_is_not_in_memory(sandbox):
    """The warm interpreter a test runs in holds no other test's stdin: the program scans every
    readable page within 2 MB of its objects and of libc (a write() from an unmapped page fails
    with EFAULT instead of crashing) for another test's marker."""
    program = """import ctypes, gc, os, sys
own = sys.stdin.read().encode()
needle = ('SEC' + 'RET-').encode()
libc = ctypes.CDLL(None, use_errno=True)
write = ctypes.cast(libc.write, ctypes.c_void_p).value
chunks = {id(o) >> 20 for o in gc.get_objects()} | {write >> 20, id(own) >> 20}
r, w = os.pipe()
seen = set()
for chunk in {c + d for c in chunks for d in range(-2, 3)}:
    for page in range(chunk << 20, (chunk + 1) << 20, 4096):
        n = libc.write(w, ctypes.c_void_p(page), 4096)
        data = os.read(r, n) if n > 0 else b''
        at = data.find(needle)
        while at >= 0:
            seen.add(data[at + len(needle) : at + len(needle) + 2])
            at = data.find(needle, at + 1)
print(sorted(t for t in seen - {own[len(needle) : len(needle) + 2]} if t[:1].isdigit() and t[1:] == b'-'))"""
    tests = [Case(f"SECRET-{i}-{uuid.uuid4().hex}", "[]") for i in range(3)]
    assert sandbox.run(program, tests).verdicts == ["ok"] * 3
    assert sandbox.run(program, [Case("SECRET-7-x", "[]")]).verdicts == ["ok"]  # nor an earlier program's


def test_python_runs_as_a_fresh_interpreter_would(contained):
    """What ``python -S -I -B main.py`` in /box shows a program: names, argv, exit statuses, and the
    flush at shutdown of stdout and of a file object the program left open."""
    program = (
        "import sys, os\nprint(__name__, __file__, sys.argv, os.getcwd(), 'site' in sys.modules)\n"
        "out = open(1, 'w')\nout.write('kept open\\n')"
    )
    expected = "__main__ /box/main.py ['main.py'] /box False\nkept open"
    assert contained.run(program, [Case("", expected)]).verdicts == ["ok"]
    for ending, expected_verdict in [
        ("raise SystemExit('bye')", "runtime_error"),
        ("raise SystemExit(3)", "runtime_error"),
        ("import sys\nsys.exit()", "ok"),
    ]:
        program = f"import atexit\natexit.register(lambda: print('atexit'))\n{ending}"
        assert contained.run(program, [Case("", "atexit")]).verdicts == [expected_verdict]
    assert contained.run("import sys\nsys.stdout.write('x')\nimport os\nos.close(1)", ONE).verdicts == [
        "runtime_error"
    ]  # status 120


# ---- correctness ------------------------------------------------------------------------------


def test_correct_wrong_crashing_python(sandbox):
    correct = "a, b = map(int, input().split())\nprint(a + b)"
    assert sandbox.run(correct, ADD).verdicts == ["ok"] * 3
    assert sandbox.run("a, b = map(int, input().split())\nprint(a - b)", ADD).verdicts == ["wrong", "wrong", "ok"]
    assert sandbox.run("raise SystemExit(3)", ADD[:1]).verdicts == ["runtime_error"]
    assert sandbox.run("1 / 0", ADD[:1]).verdicts == ["runtime_error"]
    assert sandbox.run("syntax error here", ADD[:1]).verdicts == ["runtime_error"]


def test_rewards_all_and_fraction(sandbox):
    result = sandbox.run("a, b = map(int, input().split())\nprint(a - b)", ADD)
    assert result.reward("all") == 0.0 and result.reward("fraction") == pytest.approx(1 / 3)
    assert Result(["ok", "ok"], ["", ""]).reward() == 1.0 and Result([], []).reward("fraction") == 0.0


def test_large_stdin(sandbox):
    numbers = list(range(200_000))
    program = "import sys\nprint(sum(map(int, sys.stdin.read().split())))"
    assert sandbox.run(program, [Case(" ".join(map(str, numbers)), str(sum(numbers)))]).verdicts == ["ok"]


def test_run_many_keeps_order(sandbox):
    jobs = [("a, b = map(int, input().split())\nprint(a + b)", ADD, "python"), ("print(0)", ADD, "python")] * 3
    assert [r.verdicts for r in sandbox.run_many(jobs)] == [["ok"] * 3, ["wrong", "wrong", "ok"]] * 3


def test_fork_bomb_does_not_starve_neighbours(sandbox):
    """RLIMIT_NPROC counts per uid, so each running program gets a uid of its own."""
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    jobs = [(bomb, ONE, "python")] + [("a, b = map(int, input().split())\nprint(a + b)", ADD, "python")] * 4
    assert [r.verdicts for r in sandbox.run_many(jobs)] == [["timeout"]] + [["ok"] * 3] * 4


def test_rlimits_only_fallback_still_judges(sandbox):
    """The fallback path (no namespaces) on benign programs; it contains far less, so no hostile ones."""
    fallback = Sandbox(cpu_seconds=1, wall_seconds=2.0, output_bytes=10_000)
    fallback.isolation = "rlimits-only"
    assert fallback.run("a, b = map(int, input().split())\nprint(a + b)", ADD).verdicts == ["ok"] * 3
    assert fallback.run("while True:\n    pass", ONE).verdicts == ["timeout"]
    assert fallback.run("x = bytearray(10**10)", ONE).verdicts == ["memory"]
    assert fallback.run("print('x' * 20_000)", ONE).verdicts == ["output_limit"]


@pytest.fixture(scope="module")
def cpp(sandbox) -> Sandbox:
    if not os.path.exists(
        "/usr/bin/g++"
    ):  # the sandbox runs /usr/bin/g++ (a namespaced cell sees only the host's /usr)
        found = shutil.which("g++")
        pytest.skip(
            f"C++ verdicts need /usr/bin/g++ (apt-get install g++){f'; {found} is outside /usr' if found else ''}"
        )
    return sandbox


def test_cpp_verdicts(cpp):
    add = "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }"
    assert cpp.run(add, ADD, "cpp").verdicts == ["ok"] * 3
    assert cpp.run("int main() { return }", ADD, "cpp").verdicts == ["compile_error"] * 3
    hog = "#include <vector>\nint main() { std::vector<char> v(1ull << 36); return v[5]; }"
    assert cpp.run(hog, ADD[:1], "cpp").verdicts == ["memory"]
    assert cpp.run("int main() { for (;;); }", ADD[:1], "cpp").verdicts == ["timeout"]
    assert cpp.run("int main() { int *p = nullptr; return *p; }", ADD[:1], "cpp").verdicts == ["runtime_error"]


# ---- pure logic -------------------------------------------------------------------------------

lines = st.lists(
    st.text(st.characters(blacklist_categories=["Cs", "Zl", "Zp", "Cc"]), max_size=10), min_size=1, max_size=6
)


@given(lines, st.lists(st.sampled_from([" ", "\t", "  "]), min_size=6, max_size=6), st.integers(0, 3))
def test_comparison_ignores_trailing_whitespace(text, pads, newlines):
    expected = "\n".join(text)
    padded = "\n".join(line + pad for line, pad in zip(text, pads, strict=False)) + "\n" * newlines
    assert same_output(padded, expected)


@given(lines, st.data())
def test_comparison_sees_content(text, data):
    expected = "\n".join(text)
    row = data.draw(st.integers(0, len(text) - 1))
    changed = list(text)
    changed[row] = "#" + changed[row]
    assert not same_output("\n".join(changed), expected)


def test_verdict_order():
    ok = Outcome(b"3\n", b"", 0, None, 0.1)
    assert verdict(ok, "3", 1) == "ok"
    assert verdict(Outcome(b"", b"", None, 9, 1.2), "3", 1) == "timeout"
    assert verdict(Outcome(b"", b"", None, 9, 0.1), "3", 1) == "runtime_error"
    assert verdict(Outcome(b"", b"MemoryError\n", 1, None, 0.1), "3", 1) == "memory"
    assert verdict(Outcome(b"3\n", b"", None, 9, 0.1, output_exceeded=True), "3", 1) == "output_limit"
