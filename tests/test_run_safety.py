"""A run that can be trusted, through the real CLI: degenerate settings are one clear error, a run
whose updates go non-finite stops with a non-zero exit and writes nothing non-finite, SIGTERM saves
a checkpoint and exits non-zero, and per-iteration shares describe their iteration alone."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from k15_cli import CONF, checkpoint_weights, data_args, k15, scalars
from tars import tar_bytes

pytestmark = pytest.mark.slow


def tiny_run(tiny_dir: Path, shard_dir: Path, name: str, iterations: int = 3, *extra: str) -> list[str]:
    return [
        "fit",
        "-c",
        str(CONF / "tiny.yaml"),
        "-c",
        str(CONF / "engine/hf.yaml"),
        *data_args(shard_dir),
        f"--model.init_args.model.init_args.path={tiny_dir}",
        "--data.init_args.prompts_per_iteration=4",
        "--model.init_args.rollout.init_args.samples_per_prompt=4",
        "--model.init_args.rollout.init_args.max_new_tokens=16",
        "--model.init_args.heldout_max_new_tokens=16",
        f"--data.init_args.iterations={iterations}",
        f"--trainer.val_check_interval={iterations}",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.callbacks=[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
        "init_args: {every_n_train_steps: 1, save_top_k: -1}}, "
        f"{{class_path: k15.export.ExportPretrained, init_args: {{dirpath: runs/{name}/hf}}}}, k15.summary.RunSummary]",
        *extra,
    ]


@pytest.mark.parametrize(
    "override, names",
    [
        ("--model.init_args.rollout.init_args.samples_per_prompt=1", ["samples_per_prompt", "k ≥ 2"]),
        ("--model.init_args.rollout.init_args.samples_per_prompt=-2", ["samples_per_prompt"]),
        ("--model.init_args.rollout.init_args.max_new_tokens=0", ["max_new_tokens"]),
        ("--model.init_args.rollout.init_args.max_new_tokens=100000", ["max_new_tokens", "no room"]),
        ("--model.init_args.rollout.init_args.temperature=-1", ["temperature"]),
        ("--data.init_args.prompts_per_iteration=0", ["prompts_per_iteration"]),
        ("--data.init_args.iterations=0", ["iterations"]),
        ("--model.init_args.loss.init_args.tau=0", ["tau"]),
        ("--model.init_args.optimizer.init_args.lr=.inf", ["learning rate", "inf"]),
        ("--model.init_args.optimizer.init_args.lr=0", ["learning rate"]),
        ("--model.init_args.passes_per_iteration=0", ["passes_per_iteration"]),
        ("--model.init_args.max_skipped_steps_in_a_row=0", ["max_skipped_steps_in_a_row"]),
    ],
)
def test_degenerate_settings_are_one_clear_error_naming_the_key(override, names, tiny_dir):
    result = k15(
        "fit", "-c", "conf/tiny.yaml", f"--model.init_args.model.init_args.path={tiny_dir}", override, check=False
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) < 15, result.stderr
    for name in names:
        assert name in result.stderr, result.stderr


def no_nan(obj) -> bool:
    """No NaN in any tensor or float of ``obj`` (+inf is a legitimate sentinel, e.g. ModelCheckpoint's kth_value)."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or not bool(obj.isnan().any())
    if isinstance(obj, dict):
        return all(no_nan(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(no_nan(v) for v in obj)
    return not (isinstance(obj, float) and math.isnan(obj))


@pytest.mark.parametrize(
    "engine, override",
    [
        ("hf", "--model.init_args.optimizer.init_args.lr=1e6"),
        pytest.param("vllm", "--model.init_args.optimizer.init_args.lr=1e30", marks=pytest.mark.vllm),
    ],
    ids=["lr 1e6, HF", "lr 1e30, vLLM"],
)
def test_a_run_gone_non_finite_stops_non_zero_and_writes_nothing_non_finite(
    engine, override, tiny_dir, shard_dir, tmp_path
):
    override = [override, "-c", str(CONF / f"engine/{engine}.yaml")]
    result = k15(
        *tiny_run(tiny_dir, shard_dir, "nan", 8),
        *override,
        "--model.init_args.gradient_clip_norm=null",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    # stopped by the third non-finite step in a row, or by weights gone non-finite before a checkpoint
    assert last_line.startswith("k15: error:") and "non-finite" in last_line, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs/nan/hf").exists()  # no export of a failed run
    for path in (tmp_path / "runs/nan/version_0/checkpoints").glob("*.ckpt"):
        state = torch.load(path, weights_only=False)
        assert no_nan(state) and all(torch.isfinite(w).all() for w in state["state_dict"].values()), path
    summary = json.loads((tmp_path / "runs/nan/version_0/summary.json").read_text())
    assert summary["finished"] is False and "non-finite" in summary["stopped"]
    if "in a row" in last_line:  # the third stopped the run before it logged: the first two were counted
        assert [s.value for s in scalars(tmp_path / "runs/nan/version_0")["train/skipped_steps"]][-2:] == [1.0, 2.0]


def test_sigterm_saves_the_whole_state_exits_143_and_the_run_resumes(tiny_dir, shard_dir, tmp_path):
    args = tiny_run(tiny_dir, shard_dir, "term", 40)
    process = subprocess.Popen(
        [sys.executable, "-m", "k15", *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    checkpoints = tmp_path / "runs/term/version_0/checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("epoch=*.ckpt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr.strip().splitlines()[-1] and "Traceback" not in stderr
    last = checkpoints / "last.ckpt"
    state = torch.load(last, weights_only=False)
    done = state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"]
    assert 1 <= done < 40 and "RolloutCallback" in state["callbacks"] and "k15" in state
    summary = json.loads((tmp_path / "runs/term/version_0/summary.json").read_text())
    assert summary["finished"] is False and "SIGTERM" in summary["stopped"]
    assert not (tmp_path / "runs/term/hf").exists()

    resumed = k15(
        *args,
        f"--data.init_args.iterations={done + 2}",
        f"--trainer.val_check_interval={done + 2}",
        f"--ckpt_path={last}",
        cwd=tmp_path,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = sorted({s.step for s in scalars(tmp_path / "runs/term/version_1")["rollout/reward"]})
    assert steps == [done, done + 1]  # continued after the signalled iteration, none repeated
    assert json.loads((tmp_path / "runs/term/version_1/summary.json").read_text())["finished"] is True
    assert set(checkpoint_weights(last)) and (tmp_path / "runs/term/hf/model.safetensors").exists()


def test_shares_describe_their_iteration_alone(tiny_dir, shard_dir, tmp_path):
    """Every logged family of shares sums to 1 at every step (a reason absent from an iteration
    logs 0, not its last value), and tokens_per_s is trained tokens over the run's wall time."""
    k15(
        *tiny_run(tiny_dir, shard_dir, "shares", 4),
        "--model.init_args.rollout.init_args.max_new_tokens=6",
        "--model.init_args.reward.init_args.shaping=[{class_path: k15.reward.LengthPenalty, init_args: {weight: 0.5}}]",
        cwd=tmp_path,
    )
    logged = scalars(tmp_path / "runs/shares/version_0")
    for family, at_least in (("reward/correct/", 1), ("reward/length/", 2), ("rollout/finish_", 4)):
        tags = [tag for tag in logged if tag.startswith(family) and tag.count("/") == family.count("/")]
        assert len(tags) >= at_least, (family, tags)
        for step in range(4):
            total = sum(event.value for tag in tags for event in logged[tag] if event.step == step)
            assert total == pytest.approx(1.0), (family, step, total)
    summary = json.loads((tmp_path / "runs/shares/version_0/summary.json").read_text())
    wall = summary["wall_s"]  # rounded to 0.01 s
    assert summary["finished"] is True and summary["tokens_per_s"] == pytest.approx(
        summary["trained_tokens"] / wall, rel=0.006 / wall + 1e-3
    )


def test_damaged_shards_through_the_cli_are_skipped_counted_or_one_line(tiny_dir, shard_dir, tmp_path):
    """The default data path in a real run: a directory, a zero-byte shard, a truncated one and a
    100k-character prompt beside good shards are counted and the run finishes; a set with nothing
    usable is one ``k15: error:`` line naming it."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for n, good in enumerate(sorted(shard_dir.glob("train-*.tar.gz"))[:2]):  # read after the damaged ones (name order)
        (shards / f"train-z{n}.tar.gz").write_bytes(good.read_bytes())
    whole = sorted(shard_dir.glob("train-*.tar.gz"))[2].read_bytes()
    (shards / "train-cut.tar.gz").write_bytes(whole[:200])  # cut inside its first record
    (shards / "train-empty.tar.gz").write_bytes(b"")
    (shards / "train-dir.tar.gz").mkdir()
    (shards / "train-long.tar").write_bytes(
        tar_bytes(
            {"x.json": json.dumps({"prompt": "Q:" + "1" * 100_000 + "=", "answer": "1", "difficulty": 1}).encode()}
        )
    )
    run = tiny_run(
        tiny_dir,
        shard_dir,
        "damaged",
        3,
        f"--data.init_args.train_shards={shards}/train-*",
        "--data.init_args.shuffle_buffer=0",
    )
    result = k15(*run, cwd=tmp_path, check=False)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    logged = scalars(tmp_path / "runs/damaged/version_0")
    counts = {tag.split("/")[-1]: logged[tag][-1].value for tag in logged if tag.startswith("data/skipped/")}
    assert counts == {"corrupt_shard": 2.0, "not_a_file": 1.0, "too_long": 1.0}, counts
    assert "corrupt_shard" in result.stderr and "not_a_file" in result.stderr  # the start-up line

    for path in shards.glob("train-z*"):
        path.unlink()
    result = k15(*run, cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith("k15: error:"), (
        result.stderr[-2000:]
    )
    assert f"{shards}/train-*" in result.stderr.strip().splitlines()[-1]
