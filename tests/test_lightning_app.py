"""lightning_app.py: the job spec, Job.run's arguments (the SDK's network call is the one fake:
no cloud is reachable), and the command it generates run for real as 2 "nodes" on localhost."""

import json
import os
import shlex
import subprocess
import sys

import pytest
from k15_cli import ROOT, checkpoint_weights, data_args, exported_weights, scalars

sys.path.insert(0, str(ROOT))
import lightning_app  # noqa: E402

LONG_COT = ["-c", "conf/long_cot.yaml"]


def spec_of(*argv: str) -> dict:
    return lightning_app.job_spec(lightning_app.parse(list(argv)))


def test_dry_run_prints_the_job_spec(tmp_path):
    result = subprocess.run(
        [sys.executable, "lightning_app.py", *LONG_COT, "--machine", "H200_X_8", "--nodes", "4", "--interruptible",
         "--max-run-attempts", "3", "--storage", "/teamspace/s3_folders/ckpts/k15", "--studio", "rl", "--dry-run",
         "--", "--data.init_args.iterations=10"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    spec = json.loads(result.stdout)
    assert (spec["machine"], spec["num_machines"], spec["interruptible"], spec["max_run_attempts"]) == (
        "H200_X_8", 4, True, 3,
    )  # fmt: skip
    command = shlex.split(spec["command"])
    assert command[:6] == ["python", "-m", "k15", "fit", "-c", "conf/long_cot.yaml"]
    assert {"--trainer.num_nodes=4", "--trainer.devices=8", "--ckpt_path=last"} <= set(command)
    assert "--trainer.logger.init_args.save_dir=/teamspace/s3_folders/ckpts/k15/runs" in command
    assert command[-1] == "--data.init_args.iterations=10"  # the user's overrides come last: they win


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--machine", "H100_X_8", "--nodes", "2"], "--storage"),  # machines keep separate artifacts
        (["--machine", "H100_X_8", "--studio", "a", "--image", "b"], "--image"),
        (["--machine", "H100_X_8", "--env", "NOEQUALS"], "--env"),
        (["--machine", "H100_X_8", "--nodes", "0"], "--nodes"),
    ],
)
def test_a_bad_launch_is_one_line(argv, named, capsys):
    assert lightning_app.main([*LONG_COT, *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1


def test_job_run_gets_the_sdk_types_and_arguments(monkeypatch):
    """The real SDK's ``Job.run`` signature binds the arguments; only its network call is replaced."""
    import inspect

    from lightning_sdk import Job, Machine

    calls = []
    signature = inspect.signature(Job.run)
    monkeypatch.setattr(Job, "run", classmethod(lambda cls, **kwargs: calls.append(kwargs)))
    monkeypatch.setenv("LIGHTNING_USER_ID", "user")
    monkeypatch.setenv("LIGHTNING_API_KEY", "key")
    spec = spec_of(*LONG_COT, "--machine", "H100_X_8", "--name", "dapo", "--teamspace", "rl", "--env", "A=1")
    lightning_app.submit(spec)
    (kwargs,) = calls
    signature.bind(**kwargs)  # every argument is one Job.run takes
    assert kwargs["machine"] is Machine.H100_X_8 and kwargs["num_machines"] == 1 and kwargs["env"] == {"A": "1"}
    assert "--trainer.logger.init_args.save_dir=/teamspace/jobs/dapo/runs" in kwargs["command"]


def test_no_credentials_is_one_clear_error(monkeypatch, tmp_path):
    from lightning_sdk.lightning_cloud.login import Auth

    for key in ("LIGHTNING_USER_ID", "LIGHTNING_API_KEY", "LIGHTNING_AUTH_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(Auth, "secrets_file", tmp_path / "credentials.json")
    with pytest.raises(lightning_app.LaunchError, match="lightning login"):
        lightning_app.submit(spec_of(*LONG_COT, "--machine", "H100_X_8"))


def run_nodes(command: list[str], tmp_path, port: int) -> None:
    """The job's command on 2 "nodes" of 1 process each, on localhost, as the platform would start it."""
    nodes = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=os.environ
            | {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "NODE_RANK": str(rank),
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "2",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    errors = [node.communicate(timeout=600)[1] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), errors[0][-3000:] + errors[1][-3000:]


@pytest.mark.vllm
@pytest.mark.multiprocess
@pytest.mark.usefixtures("one_tp_engine_at_a_time")
@pytest.mark.timeout(900)
def test_the_generated_command_runs_on_two_localhost_nodes_and_a_retry_resumes(shard_dir, tmp_path, master_port):
    """The CPU rehearsal of long_cot.yaml as 2 nodes × 1 process (gloo). The first attempt stops
    after its first optimizer step, as a failed attempt would; the retry, the same command,
    resumes from that attempt's last checkpoint and finishes the run."""
    storage = tmp_path / "storage"
    spec = spec_of(
        "-c", str(ROOT / "conf/long_cot.yaml"), "-c", str(ROOT / "conf/smoke/cpu.yaml"), "--machine", "CPU_X_1",
        "--nodes", "2", "--storage", str(storage), "--", *data_args(shard_dir),
    )  # fmt: skip
    command = [sys.executable, *shlex.split(spec["command"])[1:]]
    assert "--trainer.num_nodes=2" in command and "--trainer.devices=1" in command
    run_nodes([*command, "--trainer.max_steps=1"], tmp_path, master_port)
    run_dir = storage / "runs/smoke/job"
    assert (run_dir / "checkpoints/last.ckpt").is_dir()  # sharded: both nodes wrote their part
    assert len(list((run_dir / "checkpoints/last.ckpt").glob("*.distcp"))) == 2
    run_nodes(command, tmp_path, master_port)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] >= 2
    logged = scalars(run_dir)
    assert [e.step for e in logged["perf/iteration_seconds"]] == [0, 1, 2]  # no iteration run twice
    # the weights both nodes' shards hold, gathered, are what node 0 exported
    trained = checkpoint_weights(run_dir / "checkpoints/last.ckpt")
    exported = exported_weights(tmp_path / "runs/smoke/hf")
    assert exported.keys() <= trained.keys() and all((trained[k] == exported[k]).all() for k in exported)
