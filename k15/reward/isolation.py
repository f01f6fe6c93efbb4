"""Starts the sandbox's cells: namespaces, a bare read-only root, then a warm interpreter in them.

Not imported by the sandbox: ``k15.reward.sandbox`` starts this file once as a fork server,
``python -S -I isolation.py CHANNEL_FD``, stdlib only, and sends it one request per cell: a
``marshal``-ed spec plus three fds that become the cell's stdin (requests), stdout (replies) and
stderr (its own failures). The cell, ``cell.py``, then runs every test of every program it is sent;
its docstring says how a test is contained inside it. The spec:

    mode       "namespaces" | "rlimits-only"
    home       host folder: where the root is mounted ("namespaces"), or the parent of the tests'
               working folders ("rlimits-only")
    python     the interpreter that runs ``cell.py``, and so every Python program
    binds      extra host folders to bind read-only at the same path (that interpreter's prefix)
    env        the environment of the cell, and so of every program

Process tree in "namespaces" mode:

    server (host pid, root) ── fork per cell
      └─ launcher (root, own session) ── unshare(mount, net, pid, ipc, uts); IPC objects off; fork; waits
           └─ cell (pid 1 of the new pid namespace, root) ── builds the root; exec python cell.py; chroot
                └─ one test at a time (unprivileged uid, no capabilities, no_new_privs) ── see cell.py

The root is a read-only tmpfs holding read-only, nosuid binds of /usr (with the /bin, /lib, /lib64,
/sbin symlinks of a merged-/usr system) and of ``binds``, /dev/null, /dev/zero and /dev/urandom, and
/box, where the cell mounts a fresh size-capped tmpfs owned by the test's uid for each test: the only
writable place (/tmp points to it). No /etc, /proc, /root, /work or /home exists there. The network
namespace has only a down loopback, so any connect fails. Mounts never propagate to the host (the
mount tree is made private first), and all of them vanish with the namespace.

The namespaces are the cell's, shared by the tests it runs one after another, so what a test could
leave in them for the next is closed off: every process of the test is killed and reaped before its
verdict (cell.py), its tmpfs is unmounted, and System V shared memory, message queues, semaphores and
POSIX message queues, which outlive their creator, cannot be created (their limits in the cell's IPC
namespace are 0: such calls fail with ENOSPC/EINVAL, where a fresh IPC namespace would allow them).
An unprivileged test cannot mount, change the hostname or configure the network. Killing the
launcher kills the cell (parent-death signal), and the cell's death, as pid 1, its whole namespace;
the server's death kills every launcher.

"rlimits-only" (a container that forbids unshare, or no root) starts the cell without namespaces,
as a child subreaper, in the host's root: tests keep the rlimits, the scrubbed environment, a fresh
working folder under ``home`` and, when we are root, their own uid, with its leftovers killed (by
uid, host-wide). Then NOT contained: reads of any world-readable file (/etc/passwd, the project),
the network, writes to world-writable places (/tmp), IPC objects, and, without root, the host
user's own files and background processes that call setsid (they escape the kill of the test's
process group).

Not closed off in either mode: a uid's kernel keyring (keyctl) outlives its processes, and uids
are reused (``SANDBOX_UIDS`` in sandbox.py), so a program could leave data there for a later
program that gets the same uid.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import signal
import socket
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = (
    0x20000,
    0x4000000,
    0x8000000,
    0x20000000,
    0x40000000,
)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1,
    2,
    4,
    8,
    32,
    4096,
    16384,
    1 << 18,
)
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, SIGKILL = 1, 36, 38, 9
MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
DEVICES = ("null", "zero", "urandom")
# IPC objects outlive the test that made them; these limits of the (new) IPC namespace forbid them
IPC_OFF = {"kernel/shmmni": "0", "kernel/msgmni": "0", "kernel/sem": "0 0 0 0", "fs/mqueue/queues_max": "0"}
CELL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cell.py")

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


def build_root(root: str, binds: list[str]) -> None:
    """Mount at ``root`` (an empty folder) the cell's whole filesystem; see the module doc."""
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    os.mkdir(f"{root}/usr")
    bind_read_only("/usr", f"{root}/usr")
    for name, target in MERGED_USR.items():
        if os.path.islink(f"/{name}"):
            os.symlink(target, f"{root}/{name}")
    for path in binds:
        os.makedirs(root + path)
        bind_read_only(path, root + path)
    os.mkdir(f"{root}/dev")
    for device in DEVICES:
        open(f"{root}/dev/{device}", "w").close()
        mount(f"/dev/{device}", f"{root}/dev/{device}", None, MS_BIND)
    os.mkdir(f"{root}/box", 0o755)
    os.symlink("box", f"{root}/tmp")
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def start_cell(spec: dict) -> None:
    """In the launcher, whose stdio are the cell's pipes: contain, then exec the cell. Never returns."""
    argv = [spec["python"], "-S", "-I", "-B", CELL, spec["mode"], spec["home"]]
    if spec["mode"] == "rlimits-only":
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphans of a test come to the cell to be reaped
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.execve(argv[0], argv, spec["env"])
    check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount reaches the host
    # a procfs of our own (a container's /proc/sys may be read-only); its IPC limits are the writer's
    # IPC namespace's, the new one's
    mount("proc", spec["home"], "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name, value in IPC_OFF.items():
        with open(f"{spec['home']}/sys/{name}", "w") as limit:
            limit.write(value)
    check(libc.umount2(spec["home"].encode(), 0), "umount proc")
    cell = os.fork()
    if cell == 0:
        try:
            libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # killing the launcher kills the namespace
            build_root(spec["home"], spec["binds"])
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # inherited by every test
            os.execve(argv[0], argv, spec["env"])
        except BaseException as error:  # noqa: BLE001 - the host sees the cell's pipes close and raises
            os.write(2, f"sandbox: cell setup failed: {error}\n".encode())
        os._exit(1)
    os.waitpid(cell, 0)
    os._exit(0)


def serve(channel: socket.socket) -> None:
    """Fork server: one request = a marshal-ed spec plus fds (requests, replies, errors).

    Each launcher starts a new session, so the host can kill a cell with killpg(pid); the reply is
    that pid. Exits when the host closes the channel.
    """
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # finished launchers are reaped by the kernel
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # and so are orphans of killed cells, not left as zombies
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(channel, 1 << 16, 3)
        except OSError:
            return
        if not message:
            return
        pid = os.fork()
        if pid == 0:
            try:
                channel.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the launcher, and the cell, wait themselves
                os.setsid()
                libc.prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)  # the server's death ends every cell
                for target, fd in enumerate(fds):
                    os.dup2(fd, target)
                    os.close(fd)
                start_cell(marshal.loads(message))
            except BaseException as error:  # noqa: BLE001 - the host sees the cell's pipes close and raises
                os.write(2, f"sandbox: launcher failed: {error}\n".encode())
            os._exit(1)
        for fd in fds:
            os.close(fd)
        channel.send(marshal.dumps(pid))


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
