"""Exact resume after ``kill -9``, through the real CLI: a run killed mid-way and resumed from its
last checkpoint logs the same metrics and exports the same weights as a run never interrupted.

Three set-ups cover every piece of state a resume needs: the default streamed prompts with vLLM
rollouts (the data stream's position), partial rollouts (the replay buffer, with the engine's
log-probs), and curriculum sampling with HF rollouts (the success table and sampler generator;
HF's per-sample seeds). The update's row order, the sampling seeds and the RNG states are in
every one.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from k15_cli import CONF, checkpoint_weights, data_args, exported_weights, k15, same, scalars

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TIMING = ("rollout/seconds", "rollout/sync_seconds", "rollout/tokens_per_s", "perf/iteration_seconds")
EXACT = 0.0  # the tolerance these runs meet on CPU: bit-identical (see the test's assertion)

CALLBACKS = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{every_n_train_steps: 1, save_top_k: -1}}
    - class_path: k15.export.ExportPretrained
      init_args: {{dirpath: {export}}}
    - class_path: k15.summary.RunSummary
"""

SETUPS = {
    "stream_vllm": ["-c", str(CONF / "engine/vllm.yaml")],
    "partial_vllm": [
        "-c",
        str(CONF / "engine/vllm.yaml"),
        "--model.init_args.rollout.init_args.segment_tokens=8",
        "--model.init_args.rollout.init_args.max_new_tokens=24",
    ],
    "curriculum_hf": ["-c", str(CONF / "data/curriculum.yaml"), "-c", str(CONF / "engine/hf.yaml")],
}
ITERATIONS = 5


def run_args(setup: list[str], name: str, tiny_dir: Path, shard_dir: Path, cwd: Path) -> list[str]:
    (cwd / f"{name}.yaml").write_text(CALLBACKS.format(export=f"runs/{name}/hf"))
    return [
        "fit",
        "-c",
        str(CONF / "tiny.yaml"),
        *setup,
        "-c",
        f"{name}.yaml",
        *data_args(shard_dir),
        f"--model.init_args.model.init_args.path={tiny_dir}",
        "--data.init_args.prompts_per_iteration=4",
        "--model.init_args.rollout.init_args.samples_per_prompt=4",
        "--model.init_args.heldout_max_new_tokens=16",
        f"--data.init_args.iterations={ITERATIONS}",
        f"--trainer.val_check_interval={ITERATIONS}",
        "--trainer.num_sanity_val_steps=0",
        "--model.init_args.reward.init_args.shaping=[{class_path: k15.reward.LengthPenalty, init_args: {weight: 0.5}}]",
        f"--trainer.logger.init_args.name={name}",
    ]


def kill_after_checkpoint(args: list[str], cwd: Path, folder: Path, minimum_step: int) -> Path:
    """Start the run, SIGKILL it once a checkpoint of ≥ ``minimum_step`` optimizer steps exists
    (Lightning writes a checkpoint to a temporary name and renames it: present means complete)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "k15", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        saved = sorted(folder.glob("epoch=*-step=*.ckpt"), key=lambda p: int(p.stem.split("step=")[1]))
        if saved and int(saved[-1].stem.split("step=")[1]) >= minimum_step:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return saved[-1]
        time.sleep(0.05)
    process.kill()
    raise AssertionError(
        f"no checkpoint of ≥ {minimum_step} steps before the run ended or timed "
        f"out:\n{process.stderr.read().decode()[-3000:]}"
    )


@pytest.mark.parametrize(
    "setup", [pytest.param(name, marks=pytest.mark.vllm) if name.endswith("vllm") else name for name in SETUPS]
)
def test_kill_9_then_resume_equals_the_uninterrupted_run(setup, tiny_dir, shard_dir, tmp_path):
    k15(*run_args(SETUPS[setup], "whole", tiny_dir, shard_dir, tmp_path), cwd=tmp_path)
    args = run_args(SETUPS[setup], "cut", tiny_dir, shard_dir, tmp_path)
    checkpoint = kill_after_checkpoint(args, tmp_path, tmp_path / "runs/cut/version_0/checkpoints", minimum_step=2)
    assert not (tmp_path / "runs/cut/hf").exists()  # killed: nothing exported
    k15(*args, f"--ckpt_path={checkpoint}", cwd=tmp_path)

    assert_same_run(tmp_path / "runs/whole/version_0", tmp_path / "runs/cut/version_1")
    a, b = exported_weights(tmp_path / "runs/whole/hf"), exported_weights(tmp_path / "runs/cut/hf")
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= EXACT

    if setup == "partial_vllm":  # the cut fell between segments: the checkpoint carried unfinished trajectories
        assert torch.load(checkpoint, weights_only=False)["callbacks"]["RolloutCallback"]["buffers"][0]["groups"]
        whole = scalars(tmp_path / "runs/whole/version_0")
        assert max(event.value for event in whole["rollout/stale_token_share"]) > 0 and "rollout/finish_budget" in whole

    # the exported weights are the trained module's: those of the run's last checkpoint
    last = max(
        (tmp_path / "runs/whole/version_0/checkpoints").glob("epoch=*-step=*.ckpt"),
        key=lambda p: int(p.stem.split("step=")[1]),
    )
    trained = checkpoint_weights(last)
    assert all(torch.equal(trained[key], a[key]) for key in a) and set(a) <= set(trained)
    # and both runs end in the same RL state: replay buffer (tokens, engine log-probs), data position or sampler
    ends = [
        torch.load(path, weights_only=False) for path in (last, tmp_path / "runs/cut/version_1/checkpoints" / last.name)
    ]
    assert same(*(end["callbacks"]["RolloutCallback"] for end in ends))
    data_state = next(key for key in ends[0] if key.endswith("DataModule"))
    assert same(ends[0][data_state], ends[1][data_state])


def assert_same_run(whole_dir: Path, resumed_dir: Path) -> None:
    """The resumed run logged, from its first iteration on, exactly what the whole run logged."""
    whole, resumed = scalars(whole_dir), scalars(resumed_dir)
    resumed_steps = {event.step for event in resumed["rollout/reward"]}
    assert resumed_steps and min(resumed_steps) >= 2 and max(resumed_steps) == ITERATIONS - 1
    compared, worst = 0, 0.0
    for tag, events in resumed.items():
        if tag == "__text__" or tag in TIMING:
            continue
        expected = {event.step: event.value for event in whole[tag]}
        for event in events:
            worst = max(worst, abs(event.value - expected[event.step]))
            compared += 1
    assert compared > 50 and worst <= EXACT, f"resumed metrics differ from the uninterrupted run's by up to {worst}"
    for tag in ("heldout/accuracy", "rollout/reward", "train/loss", "perf/trained_tokens"):
        assert tag in resumed, tag


@pytest.mark.multiprocess
def test_fsdp2_sharded_checkpoint_resume_equals_the_uninterrupted_run(tiny_dir, shard_dir, tmp_path, master_port):
    """Two gloo ranks under FSDP2 with partial rollouts and packed micro-batches of ≤ 48 tokens:
    ranks finish different numbers of groups (one may finish none) and run different numbers of
    micro-batches, and each writes its own shard of the checkpoint (a folder). Stopped after its
    first optimizer step and resumed from that sharded checkpoint, the run logs the same metrics and exports
    the same weights as the uninterrupted one: weights, optimizer, every rank's replay buffer,
    data stream and random state came back."""
    env = os.environ | {"MASTER_PORT": str(master_port)}

    def args(name: str) -> list[str]:
        partial = ["-c", str(CONF / "strategy/fsdp2.yaml"), *SETUPS["partial_vllm"][2:]]  # vLLM on each rank
        return [
            *run_args(partial, name, tiny_dir, shard_dir, tmp_path),
            "--model.init_args.max_tokens_per_micro_batch=48",
        ]

    k15(*args("whole"), cwd=tmp_path, env=env)
    # stopped at its first optimizer step: iterations whose groups all wait in the buffer take none
    k15(*args("cut"), "--trainer.max_steps=1", cwd=tmp_path, env=env)
    checkpoint = tmp_path / "runs/cut/version_0/checkpoints/epoch=0-step=1.ckpt"
    assert checkpoint.is_dir()  # sharded: one file of weights and optimizer state per rank, and the metadata
    k15(*args("cut"), f"--ckpt_path={checkpoint}", cwd=tmp_path, env=env)
    assert_same_run(tmp_path / "runs/whole/version_0", tmp_path / "runs/cut/version_1")
    a, b = exported_weights(tmp_path / "runs/whole/hf"), exported_weights(tmp_path / "runs/cut/hf")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    buffers = torch.load(checkpoint / "meta.pt", weights_only=False)["callbacks"]["RolloutCallback"]["buffers"]
    assert len(buffers) == 2 and any(buffer["groups"] for buffer in buffers)
