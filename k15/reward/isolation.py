"""Launcher that contains untrusted processes: namespaces, a bare read-only root, rlimits, no root.

Not imported by the sandbox: ``k15.reward.sandbox`` starts this file once as a fork server,
``python -S -I isolation.py CHANNEL_FD``, stdlib only, and sends it one request per run: a
``marshal``-ed spec dict plus the run's stdin, stdout, stderr and status fds. The spec:

    mode       "namespaces" | "rlimits-only"
    box        host folder whose regular files are copied into the program's working directory
    argv, env  what to exec (argv[0] an absolute path inside the sandbox's root)
    limits     {"cpu": s, "memory": bytes, "file": bytes, "processes": n, "open_files": n}
    uid        unprivileged uid = gid to run as (when we are root)
    binds      extra host folders to bind read-only at the same path (an interpreter's prefix)
    scratch    bytes of the tmpfs that is the working directory
    copy_out   names copied from the working directory back into ``box`` afterwards (a compiled binary)

Process tree in "namespaces" mode:

    server (host pid, root) ── fork per request
      └─ launcher (root, own session) ── unshare(mount, net, pid, ipc, uts); fork
      └─ init (pid 1 of the new pid namespace, root) ── builds the root; fork; waits
           └─ program (pid 2) ── rlimits; chroot; setuid(uid), which drops every capability; exec

The new root is a read-only tmpfs holding read-only, nosuid binds of /usr (with the /bin, /lib,
/lib64, /sbin symlinks of a merged-/usr system) and of ``binds``, /dev/null, /dev/zero and
/dev/urandom, and /box: a size-capped tmpfs, the only writable place (/tmp points to it). No /etc,
/proc, /root, /work or /home exists there. The network namespace has only a down loopback, so any
connect fails. When the program exits, init reports and exits; the kernel then kills every process
left in the pid namespace, so nothing outlives the verdict. Mounts never propagate to the host
(the mount tree is made private first), and all of them vanish with the namespace.

"rlimits-only" (no namespaces: macOS, or a container that forbids unshare) keeps the rlimits, the
scrubbed environment and, when we are root, the uid drop, and runs in ``box`` itself. Then NOT
contained: reads of any world-readable file (/etc/passwd, the project), the network, writes to
world-writable places (/tmp), and background processes that call setsid (they escape the kill of
the process group).

Reports on the status fd a marshal-ed dict: {"exit": code} or {"signal": n}, plus "cpu" seconds used.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import resource
import signal
import socket
import stat
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x4000000, 0x8000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, SIGKILL = 1, 36, 38, 9
MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
DEVICES = ("null", "zero", "urandom")

libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    args = [None if s is None else s.encode() for s in (source, target, fstype)]
    check(libc.mount(*args, flags, None if data is None else data.encode()), f"mount {target}")


def bind_read_only(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_root(spec: dict, root: str) -> None:
    """Populate ``root`` (an empty folder) as the program's whole filesystem; see the module doc."""
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    os.mkdir(f"{root}/usr")
    bind_read_only("/usr", f"{root}/usr")
    for name, target in MERGED_USR.items():
        if os.path.islink(f"/{name}"):
            os.symlink(target, f"{root}/{name}")
    for path in spec["binds"]:
        os.makedirs(root + path)
        bind_read_only(path, root + path)
    os.mkdir(f"{root}/dev")
    for device in DEVICES:
        open(f"{root}/dev/{device}", "w").close()
        mount(f"/dev/{device}", f"{root}/dev/{device}", None, MS_BIND)
    os.mkdir(f"{root}/box")
    mount("tmpfs", f"{root}/box", "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['scratch']},mode=700,uid={spec['uid']},gid={spec['uid']}")
    os.symlink("box", f"{root}/tmp")
    copy_files(spec["box"], f"{root}/box", spec["uid"])
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def copy_files(source: str, target: str, uid: int, names: list[str] | None = None) -> None:
    """Copy regular files only, never following links (target may be written by the program)."""
    for name in names if names is not None else os.listdir(source):
        try:
            fd = os.open(f"{source}/{name}", os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            continue
        with open(fd, "rb") as src, open(f"{target}/{name}", "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.chmod(f"{target}/{name}", 0o755)
        if os.getuid() == 0:
            os.chown(f"{target}/{name}", uid, uid)


def become_program(spec: dict, root: str | None, status_fd: int) -> None:
    """In the forked child: limits, then the unprivileged uid, then exec. Never returns."""
    try:
        limits = spec["limits"]
        for which, value in (
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_CPU, limits["cpu"]),
            (resource.RLIMIT_AS, limits["memory"]),
            (resource.RLIMIT_FSIZE, limits["file"]),
            (resource.RLIMIT_NOFILE, limits["open_files"]),
            (resource.RLIMIT_NPROC, limits["processes"]),
        ):
            # hard CPU limit one second above soft: SIGXCPU first, SIGKILL if it is ignored
            resource.setrlimit(which, (value, value + 1 if which == resource.RLIMIT_CPU else value))
        if root is not None:
            os.chroot(root)
            os.chdir("/box")
        else:
            os.chdir(spec["box"])
        if os.getuid() == 0:
            os.setgroups([])
            os.setgid(spec["uid"])
            os.setuid(spec["uid"])  # from root to a non-zero uid: the kernel clears all capabilities
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.close(status_fd)
        os.execve(spec["argv"][0], spec["argv"], spec["env"])
    except BaseException as error:  # noqa: BLE001 - report any failure as the program's own
        os.write(2, f"sandbox: cannot start program: {error}\n".encode())
    os._exit(127)


def supervise(spec: dict, root: str | None, status_fd: int) -> None:
    """Fork the program, wait for it, copy out what was asked, then report its status."""
    pid = os.fork()
    if pid == 0:
        become_program(spec, root, status_fd)
    _, status, usage = os.wait4(pid, 0)
    report = {"cpu": usage.ru_utime + usage.ru_stime}
    report.update({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)})
    if spec["copy_out"] and root is not None:  # without a root the program wrote into box itself
        copy_files(f"{root}/box", spec["box"], 0, spec["copy_out"])
    os.write(status_fd, marshal.dumps(report))


def contain(spec: dict, status_fd: int) -> None:
    """Run one program under ``spec`` with our stdio as its stdio; returns when it is over."""
    if spec["mode"] == "rlimits-only":
        if os.getuid() == 0:
            os.chown(spec["box"], spec["uid"], spec["uid"])
        supervise(spec, None, status_fd)
        return
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount reaches the host
    init = os.fork()
    if init == 0:
        try:
            libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # killing the launcher kills the namespace
            root = f"{spec['box']}/.root"
            os.makedirs(root, exist_ok=True)  # a compile run may have left the (empty) mount point
            build_root(spec, root)
            supervise(spec, root, status_fd)
        except BaseException as error:  # noqa: BLE001 - the host sees no status and raises
            os.write(2, f"sandbox: setup failed: {error}\n".encode())
            os._exit(1)
        os._exit(0)  # as pid 1: the kernel now kills whatever the program left behind
    os.close(status_fd)
    os.waitpid(init, 0)


def serve(channel: socket.socket) -> None:
    """Fork server: one request = a marshal-ed spec plus fds (stdin, stdout, stderr, status).

    Forking this warm process instead of starting a launcher per run saves its interpreter start-up
    (~20 ms, half of a trivial run). Each child starts a new session, so the host can kill the
    whole run with killpg(pid); the reply is that pid. Exits when the host closes the channel.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished launchers are reaped by the kernel
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # and so are orphans of killed runs, not left as zombies
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 1 << 16, 4)
        except OSError:
            return
        if not message:
            return
        pid = os.fork()
        if pid == 0:
            try:
                channel.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # we wait for init ourselves
                os.setsid()
                libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # the server's death ends every run
                for target, fd in enumerate(fds[:3]):
                    os.dup2(fd, target)
                    os.close(fd)
                contain(marshal.loads(message), fds[3])
            except BaseException as error:  # noqa: BLE001 - the host sees no status and raises
                os.write(2, f"sandbox: launcher failed: {error}\n".encode())
                os._exit(1)
            os._exit(0)
        for fd in fds:
            os.close(fd)
        channel.send(marshal.dumps(pid))


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
