"""Launch any k15 config as a Lightning Studio job (``lightning_sdk``'s ``Job.run``), on one machine or many.

    python lightning_app.py -c conf/long_cot.yaml --machine H200_X_8 --nodes 4 \\
        [--studio NAME --teamspace NAME | --image IMAGE] [--interruptible] [--max-run-attempts N] \\
        [--storage DIR] [--env KEY=VALUE ...] [--dry-run] [-- extra k15 overrides]

The job runs ``python -m k15 fit`` with the node count and the GPUs of one machine
(``--trainer.num_nodes``: Lightning reads ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK`` from
the platform, never the node count), TensorBoard and checkpoints under ``--storage`` in a folder
that does not change between attempts, and ``--ckpt_path=last``. A job that fails and is
retried (``--max-run-attempts``; a multi-machine job recreates all its machines) therefore
resumes from the last checkpoint with the whole RL state: weights, optimizer, every rank's
replay buffer, data stream and random state, the success table. The first attempt finds no
checkpoint and starts afresh.

``--dry-run`` prints the job's spec as JSON (machine, nodes, command, env) and needs neither
``lightning_sdk`` nor credentials. Without ``--dry-run``, a missing ``lightning_sdk`` or missing
credentials (``lightning login``, or ``LIGHTNING_USER_ID`` + ``LIGHTNING_API_KEY``) is one error line.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys

JOB_VERSION = "job"  # the logger's version folder: the same in every attempt, so "last" finds the checkpoint


class LaunchError(Exception):
    """A launch that cannot happen, said in one line."""


def devices_per_machine(machine: str) -> int:
    """GPUs of one machine from its name (``H200_X_8`` → 8; a name without ``_X_N`` has 1)."""
    found = re.search(r"_X_(\d+)$", machine)
    return int(found.group(1)) if found else 1


def storage_for(name: str, nodes: int, storage: str | None) -> str:
    """Where checkpoints and TensorBoard go. A one-machine job defaults to its own artifacts
    (the teamspace drive's ``jobs/<name>``); machines of a multi-machine job keep separate
    artifacts, so a sharded checkpoint every rank writes needs a shared data connection."""
    if storage:
        return storage.rstrip("/")
    if nodes > 1:
        raise LaunchError(
            "--storage: a multi-machine job needs a folder every machine sees (each machine keeps its own "
            "artifacts), e.g. --storage /teamspace/s3_folders/<connection>/k15"
        )
    return f"/teamspace/jobs/{name}"


def k15_command(configs: list[str], nodes: int, devices: int, storage: str, overrides: list[str]) -> str:
    """The job's shell command: ``python -m k15 fit`` resuming from the last checkpoint under ``storage``."""
    return shlex.join(
        [
            *("python", "-m", "k15", "fit"),
            *(arg for config in configs for arg in ("-c", config)),
            f"--trainer.num_nodes={nodes}",
            f"--trainer.devices={devices}",
            f"--trainer.logger.init_args.save_dir={storage}/runs",
            f"--trainer.logger.init_args.version={JOB_VERSION}",
            "--ckpt_path=last",
            *overrides,
        ]
    )


def job_spec(args: argparse.Namespace) -> dict:
    """``Job.run``'s keyword arguments for ``args``."""
    if args.studio and args.image:
        raise LaunchError("--studio and --image exclude each other")
    if args.nodes < 1 or (args.max_run_attempts is not None and args.max_run_attempts < 1):
        raise LaunchError("--nodes and --max-run-attempts must be ≥ 1")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LaunchError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    devices = args.devices or devices_per_machine(args.machine)
    storage = storage_for(args.name, args.nodes, args.storage)
    return {
        "name": args.name,
        "machine": args.machine,
        "num_machines": args.nodes,
        "command": k15_command(args.configs, args.nodes, devices, storage, args.overrides),
        "studio": args.studio,
        "image": args.image,
        "teamspace": args.teamspace,
        "env": env or None,
        "interruptible": args.interruptible,
        "max_run_attempts": args.max_run_attempts,
    }


def submit(spec: dict):
    """``Job.run(**spec)`` with the SDK's own types; one clear error without the SDK or credentials."""
    try:
        from lightning_sdk import Job, Machine
        from lightning_sdk.lightning_cloud.login import Auth
    except ImportError as error:
        raise LaunchError(f"lightning_sdk is not installed ({error}): pip install -e '.[cloud]'") from None
    auth = Auth()
    if not (auth.api_key or auth.auth_token or auth.load()):
        raise LaunchError(
            "no Lightning credentials: run `lightning login`, or set LIGHTNING_USER_ID and LIGHTNING_API_KEY"
        )
    try:
        machine = getattr(Machine, spec["machine"])
    except AttributeError:
        raise LaunchError(
            f"--machine {spec['machine']!r}: not a lightning_sdk Machine (e.g. H100_X_8, H200_X_8)"
        ) from None
    return Job.run(**(spec | {"machine": machine}))


def parse(argv: list[str]) -> argparse.Namespace:
    own, overrides = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", dest="configs", action="append", required=True, help="k15 config, repeatable")
    parser.add_argument("--machine", required=True, help="lightning_sdk Machine name, e.g. H200_X_8")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--devices", type=int, help="GPUs a machine (default: from the machine name)")
    parser.add_argument("--name", default="k15", help="job name, unique in the teamspace")
    parser.add_argument("--studio")
    parser.add_argument("--teamspace")
    parser.add_argument("--image")
    parser.add_argument("--interruptible", action="store_true")
    parser.add_argument("--max-run-attempts", type=int)
    parser.add_argument("--storage", help="folder for checkpoints and TensorBoard that outlives an attempt")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE in the job, repeatable")
    parser.add_argument("--dry-run", action="store_true", help="print the job spec as JSON; submit nothing")
    args = parser.parse_args(own)
    args.overrides = overrides
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        spec = job_spec(args)
        if args.dry_run:
            print(json.dumps(spec, indent=2))
            return 0
        job = submit(spec)
    except LaunchError as error:
        print(f"lightning_app.py: error: {error}", file=sys.stderr)
        return 2
    print(f"submitted job {job.name}: {job.link}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
