"""A warm, contained Python interpreter that runs untrusted programs, one forked child per test.

Not imported by the sandbox: ``isolation.py`` starts this file as ``python -S -I -B cell.py MODE
HOME`` (the interpreter Python programs are to run in), in "namespaces" mode as pid 1 of fresh
mount/net/pid/ipc/uts namespaces, root, no_new_privs, after it mounted a bare root at HOME; the cell
then chroots into it. Stdlib only; Linux ≥ 5.3 and Python ≥ 3.9 (pidfd). fd 0 brings requests,
fd 1 takes replies, fd 2 is for the cell's own failures. One request holds all tests of a program:

    request  4-byte length, a ``marshal``-ed job, then the payload: program source, each test's stdin
    job      uid, language ("python" | "cpp"), program (source bytes), stdins (bytes per test),
             limits {"cpu", "memory", "file", "processes", "open_files"}, wall (s), output_bytes,
             scratch (bytes of the working directory), compile {"argv", "limits", "wall"} (cpp)
    reply    4-byte length, a marshal-ed {"compiled": bool, "runs": [(exit, signal, cpu seconds,
             wall_exceeded, output_exceeded, stdout bytes, stderr bytes) per test]}, then each test's
             stdout and stderr (each cut at output_bytes + 1)

A test (and g++, for C++) is a forked child (``become``): its own session, its pipes as stdin/stdout/
stderr and every other fd closed, rlimits, a fresh working directory as cwd, and the job's
unprivileged uid (when we are root: that drops every capability). It then execs the compiled
binary or, for Python, returns to this module's top level, which runs ``main.py`` in the inherited,
already started interpreter (``run_python``): no 10 ms interpreter start-up per test. Meanwhile the
cell feeds stdin, reads stdout/stderr up to ``output_bytes``, keeps the wall clock (a pidfd tells
when the child exits), kills the child at the limit, then kills and reaps every other process the
test left (``kill_leftovers``), so nothing outlives a test, and only then removes the working
directory: in "namespaces" mode a tmpfs of ``scratch`` bytes owned by the uid, mounted at /box for
each test and unmounted after; in "rlimits-only" mode a new folder under HOME that the host removes.
The namespaces are the cell's, shared by its tests in turn; isolation.py says what keeps one test
from leaving anything in them for the next.

What a Python program can learn from the warm interpreter, compared with ``python -S -I -B main.py``:
    - memory: this module's code and globals (constants, the libc handle), the job's numbers
      (sizes, uid, limits) and earlier tests' exit statuses and CPU times. Never a test's stdin or
      output, nor another program: payloads and outputs live in anonymous mmaps that the child
      unmaps before it runs anything and that the cell never copies into its heap; the child reads
      its program from main.py in its working directory. The host never sends expected outputs.
    - ``sys.modules`` also holds what the cell imported, untouched: os (with stat, posixpath,
      genericpath, _collections_abc), ctypes (with struct, types), mmap, select, resource, atexit,
      gc, __future__. Importing those costs nothing; ``gc.get_freeze_count()`` is not 0, as the
      cell's objects are frozen (``gc.get_objects()`` does not list them).
    - ``sys.stdin``/``stdout``/``stderr`` are the objects this interpreter made at start-up for its
      own pipes and never used: the types, encodings and buffering a fresh one makes for pipes.
    - it runs two frames deeper (``run_python`` and this module), so recursion stops two calls
      sooner; tracebacks show the program's frames only, as usual.
    - shutdown (``finish``) joins threads, runs atexit, flushes stdio and clears the program's
      globals like the interpreter does, but does not finalize objects held elsewhere.
    - pid any, ppid 1 (the cell) in "namespaces" mode; the process is not dumpable (it changed uid
      rather than exec-ing), so it cannot be ptraced by its own uid; the hash seed and address
      layout are the cell's, the same for all tests of a cell.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import marshal
import mmap
import os
import resource
import select
import stat
import sys
import time

SIGKILL, MS_NOSUID, MS_NODEV, MNT_DETACH, CHUNK = 9, 2, 4, 2, 1 << 16
RLIMITS = {
    "cpu": resource.RLIMIT_CPU, "memory": resource.RLIMIT_AS, "file": resource.RLIMIT_FSIZE,
    "open_files": resource.RLIMIT_NOFILE, "processes": resource.RLIMIT_NPROC,
}  # fmt: skip
OPEN_MAX = os.sysconf("SC_OPEN_MAX")  # the cell never lowers its own fd limit, so no fd is above it
libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes of a (small) header, or None at the end of the requests."""
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def fill(fd: int, arena: mmap.mmap, start: int, stop: int) -> None:
    """Read exactly arena[start:stop] from fd, straight into the arena (no copy in our heap)."""
    while start < stop:
        got = os.readv(fd, [memoryview(arena)[start:stop]])
        if not got:
            raise EOFError("request cut short")
        start += got


def write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Workdirs:
    """The fresh working directory of each test: a tmpfs at /box ("namespaces"), else a new folder."""

    def __init__(self, mode: str, home: str):
        self.mode, self.home, self.count = mode, home, 0

    def make(self, uid: int, scratch: int, files: dict[str, tuple[mmap.mmap, int, int]]) -> str:
        if self.mode == "namespaces":
            box = "/box"
            options = f"size={scratch},mode=700,uid={uid},gid={uid}".encode()
            check(libc.mount(b"tmpfs", b"/box", b"tmpfs", MS_NOSUID | MS_NODEV, options), "mount /box")
        else:
            self.count += 1
            box = f"{self.home}/{self.count}"
            os.mkdir(box, 0o700)
            if os.getuid() == 0:
                os.chown(box, uid, uid)
        for name, (arena, start, stop) in files.items():
            fd = os.open(f"{box}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
            write_all(fd, memoryview(arena)[start:stop])
            if os.getuid() == 0:
                os.fchown(fd, uid, uid)
            os.close(fd)
        return box

    def remove(self, box: str) -> None:
        """Unmount the test's tmpfs; folders of "rlimits-only" runs are removed by the host."""
        if self.mode == "namespaces":
            check(libc.umount2(b"/box", MNT_DETACH), "umount /box")


def become(box: str, uid: int, limits: dict, stdio: tuple[int, int, int], arenas: list[mmap.mmap]) -> None:
    """In the forked child: forget the payload, take the test's stdio, limits, cwd and uid."""
    for arena in arenas:
        arena.close()  # unmapped: another test's stdin or output is unreadable from here on
    os.setsid()  # own process group: "rlimits-only" without root kills leftovers by their group
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    os.closerange(3, OPEN_MAX)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for name, which in RLIMITS.items():
        # hard CPU limit one second above soft: SIGXCPU first, SIGKILL if it is ignored
        resource.setrlimit(which, (limits[name], limits[name] + (name == "cpu")))
    os.chdir(box)
    if os.getuid() == 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # from root to a non-zero uid: the kernel clears all capabilities


def launch(box: str, uid: int, limits: dict, argv: list[str] | None, arenas: list[mmap.mmap]):
    """Fork one process of a test: (pid, stdin, stdout, stderr) here; in the child exec ``argv``,
    or, when it is None (Python), return None so the caller unwinds to ``run_python``."""
    stdin, stdout, stderr = os.pipe(), os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            become(box, uid, limits, (stdin[0], stdout[1], stderr[1]), arenas)
            if argv is None:
                return None
            os.execve(argv[0], argv, os.environ)
        except BaseException as error:  # noqa: BLE001 - the child must never run the cell's code
            os.write(2, f"sandbox: cannot start program: {error}\n".encode())
        os._exit(127)
    for fd in (stdin[0], stdout[1], stderr[1]):
        os.close(fd)
    return pid, stdin[1], stdout[0], stderr[0]


def kill_leftovers(uid: int, group: int) -> None:
    """After the test's main process is reaped: kill and reap whatever else it started.

    We are their reaper (pid 1, or a child subreaper in "rlimits-only"), so every process a test
    leaves is a descendant of one of our children; no child at all means nothing is left (the common
    case costs one waitpid). As root, a helper with the test's uid sends kill(-1, SIGKILL): it reaches
    every process of that uid (in "namespaces" mode only inside our pid namespace) at once, and a fork
    racing with it fails, so one pass kills all; we reap until no child is left. Without root only
    the process group can be killed; processes that left it (setsid) are not contained then.
    """
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break  # something still runs
        except ChildProcessError:
            return
    if os.getuid() != 0:
        try:
            os.killpg(group, SIGKILL)
        except ProcessLookupError:
            pass
        return
    helper = os.fork()
    if helper == 0:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, SIGKILL)
        except BaseException:  # noqa: BLE001 - ProcessLookupError: they all died meanwhile
            pass
        os._exit(0)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def read_into(fd: int, arena: mmap.mmap, filled: dict[int, int], ends: dict[int, int]) -> bool:
    """One read from fd into the rest of its slot; False at end of file."""
    got = os.readv(fd, [memoryview(arena)[filled[fd] : ends[fd]]])
    filled[fd] += got
    return got > 0


def supervise(process: tuple, uid: int, arena: mmap.mmap, stdin: tuple[int, int], slots: list, wall: float) -> tuple:
    """Feed stdin from the arena and read stdout/stderr into their slots until the process exits,
    the wall clock passes or a slot overflows (each holds ``output_bytes`` + 1); then kill it and
    what it left, and drain the pipes. Returns the test's entry of the reply."""
    pid, stdin_fd, *outputs = process
    deadline = time.monotonic() + wall
    filled = {fd: start for fd, (start, _) in zip(outputs, slots, strict=True)}
    ends = {fd: stop for fd, (_, stop) in zip(outputs, slots, strict=True)}
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    for fd in (pidfd, *outputs):
        poller.register(fd, select.POLLIN)
    position, stop = stdin
    if position < stop:
        os.set_blocking(stdin_fd, False)
        poller.register(stdin_fd, select.POLLOUT)
    else:
        os.close(stdin_fd)
    exited = wall_exceeded = output_exceeded = False
    while not (exited or wall_exceeded or output_exceeded):
        left = deadline - time.monotonic()
        wall_exceeded = left <= 0
        for fd, _ in poller.poll(max(left, 0) * 1000 + 1):
            if fd == pidfd:
                exited = True
            elif fd == stdin_fd:
                try:
                    position += os.write(stdin_fd, memoryview(arena)[position : min(stop, position + CHUNK)])
                except BrokenPipeError:  # the program stopped reading: its business
                    position = stop
                if position == stop:
                    poller.unregister(stdin_fd)
                    os.close(stdin_fd)
            elif not read_into(fd, arena, filled, ends):
                poller.unregister(fd)  # end of file; the process may still run
            output_exceeded = output_exceeded or (fd in filled and filled[fd] == ends[fd])
    if position < stop:
        os.close(stdin_fd)
    if not exited:
        os.kill(pid, SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    os.close(pidfd)
    kill_leftovers(uid, pid)
    for fd in outputs:  # what the program (or what it left) wrote before it died; no wait
        os.set_blocking(fd, False)
        try:
            while not output_exceeded and read_into(fd, arena, filled, ends):
                output_exceeded = filled[fd] == ends[fd]
        except BlockingIOError:  # a writer that escaped the kill ("rlimits-only" without root)
            pass
        os.close(fd)
    signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    cpu = usage.ru_utime + usage.ru_stime
    return (
        code,
        signal,
        cpu,
        wall_exceeded,
        output_exceeded,
        *(filled[fd] - start for fd, (start, _) in zip(outputs, slots, strict=True)),
    )


def copy_out(path: str) -> mmap.mmap | None:
    """A regular file (the compiled binary) into an anonymous mmap, never following a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        os.close(fd)
        return None
    binary = mmap.mmap(-1, info.st_size)
    fill(fd, binary, 0, info.st_size)
    os.close(fd)
    return binary


def receive() -> tuple[dict, mmap.mmap] | None:
    """The next job and an arena: its payload, then two output slots per test plus two for g++."""
    size = read_exactly(0, 4)
    if size is None:
        return None
    job = marshal.loads(read_exactly(0, int.from_bytes(size, "little")))
    payload = job["program"] + sum(job["stdins"])
    # anonymous and shared: pages appear as they are written, and writing them after a fork copies nothing
    arena = mmap.mmap(-1, payload + 2 * (len(job["stdins"]) + 1) * (job["output_bytes"] + 1))
    fill(0, arena, 0, payload)
    return job, arena


def slots(job: dict, index: int) -> list[tuple[int, int]]:
    """Arena spans of stdout and stderr of test ``index`` (-1: g++)."""
    width = job["output_bytes"] + 1
    start = job["program"] + sum(job["stdins"]) + 2 * (index + 1) * width
    return [(start, start + width), (start + width, start + 2 * width)]


def serve(workdirs: Workdirs) -> None:
    """Answer requests until the host closes fd 0. Returns only in a forked child that is to run
    a Python program: its stdio, limits, uid and cwd are set, the payload unmapped."""
    while (request := receive()) is not None:
        job, arena = request
        uid, program = job["uid"], (arena, 0, job["program"])
        arenas, runs, binary = [arena], [], None
        if job["language"] == "cpp":
            box = workdirs.make(uid, job["scratch"], {"main.cpp": program})
            compile_ = job["compile"]
            process = launch(box, uid, compile_["limits"], compile_["argv"], arenas)
            compiled = supervise(process, uid, arena, (0, 0), slots(job, -1), compile_["wall"])
            binary = copy_out(f"{box}/main") if compiled[0] == 0 else None
            workdirs.remove(box)
        files = {"main.py": program} if binary is None else {"main": (binary, 0, len(binary))}
        if binary is not None:
            arenas.append(binary)
        start = job["program"]
        for index, size in enumerate(job["stdins"] if job["language"] == "python" or binary else []):
            box = workdirs.make(uid, job["scratch"], files)
            process = launch(box, uid, job["limits"], None if binary is None else [f"{box}/main"], arenas)
            if process is None:
                return
            runs.append(supervise(process, uid, arena, (start, start + size), slots(job, index), job["wall"]))
            workdirs.remove(box)
            start += size
        header = marshal.dumps({"compiled": job["language"] == "python" or binary is not None, "runs": runs})
        write_all(1, len(header).to_bytes(4, "little") + header)
        for index, run in enumerate(runs):
            for (begin, _), length in zip(slots(job, index), run[-2:], strict=True):
                write_all(1, memoryview(arena)[begin : begin + length])
        for each in arenas:
            each.close()
    raise SystemExit(0)


def run_python() -> None:
    """Run ./main.py as ``python -S -I -B main.py`` would, then exit: a fresh __main__, its argv,
    tracebacks without our frames, SystemExit's status rules, exit 1 on an uncaught exception."""
    path = f"{os.getcwd()}/main.py"
    main = type(sys)("__main__")
    main.__file__, main.__cached__, main.__annotations__ = path, None, {}
    main.__builtins__ = sys.modules["builtins"]
    main.__loader__ = sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", path)
    sys.modules["__main__"] = main
    sys.argv = ["main.py"]
    sys.orig_argv = [sys.executable, "-S", "-I", "-B", "main.py"]
    fd = os.open(path, os.O_RDONLY)
    source = os.read(fd, os.fstat(fd).st_size)
    os.close(fd)
    try:
        exec(compile(source, path, "exec", dont_inherit=True), vars(main))
        status = 0
    except SystemExit as exit_:
        status = exit_status(exit_.code)
    except BaseException as error:  # noqa: BLE001 - what the interpreter does with an uncaught one
        sys.excepthook(type(error), error, error.__traceback__.tb_next)
        status = 1
    finish(status, vars(main))


def exit_status(code: object) -> int:
    """The exit status of ``raise SystemExit(code)``: None is 0, an int itself, else printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def finish(status: int, main: dict) -> None:
    """Shut down as the interpreter would, as far as a program can observe it, then exit: join
    non-daemon threads, run atexit handlers, flush stdout and stderr (a failing stdout flush makes
    the status 120), clear the program's globals as module teardown does (so that, say, an unclosed
    file object it kept is flushed and closed), flush what that printed (ignoring failures, as the
    interpreter's last flush does). The heap is not torn down: that would write to every object
    inherited from the cell and so copy each of its pages (several ms). Hence objects held
    elsewhere than in the program's globals (in modules it imported, in cycles) are not finalized."""
    if "threading" in sys.modules:
        sys.modules["threading"]._shutdown()
    atexit._run_exitfuncs()
    status = flush(status)
    for single_underscore in (True, False):  # the order of module teardown: _private names first
        for name in list(main):
            if (name[:1] == "_" and name[1:2] != "_") == single_underscore and name != "__builtins__":
                main[name] = None
    flush(status)
    os._exit(status & 0xFF)


def flush(status: int) -> int:
    """Flush stdout and stderr unless None or closed; the exit status after it (120 when stdout
    cannot be flushed)."""
    for stream, failed in ((sys.stdout, 120), (sys.stderr, status)):
        try:
            if stream is not None and not stream.closed:
                stream.flush()
        except Exception:  # noqa: BLE001 - as at shutdown: a broken stream, or a stand-in without flush
            status = failed
    return status


if __name__ == "__main__":
    # The first compile() in a process initialises the parser (~1 ms); do it once here, not per test
    compile("import sys\nx = [int(v) for v in sys.argv if v]\nprint(f'{x!r}', *x, sep=' ')", "<warm-up>", "exec")
    gc.freeze()  # the cell's objects: a child's collections skip them instead of copying their pages
    mode, home = sys.argv[1:3]
    if mode == "namespaces":
        os.chroot(home)
        os.chdir("/")
    serve(Workdirs(mode, home))
    run_python()
