"""Running the real ``python -m k15`` in a subprocess, and reading what a run leaves behind."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from k15.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def k15(*args: str, cwd: Path = ROOT, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "k15", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"k15 {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def printed_config(*args: str) -> str:
    """What ``k15 fit ARGS --print_config`` prints, parsed in this process (a new process spends ~7 s
    importing; the parse itself takes ~0.2 s)."""
    out, argv = io.StringIO(), sys.argv
    sys.argv = sys.argv[:1]  # the CLI's arguments are ``args`` alone
    try:
        with contextlib.redirect_stdout(out):
            main(["fit", *args, "--print_config"])
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise AssertionError(f"k15 fit {' '.join(args)} --print_config exited {exit_.code}") from None
    finally:
        sys.argv = argv
    assert "\nmodel:\n" in out.getvalue(), f"k15 fit {' '.join(args)} --print_config printed no config"
    return out.getvalue()


def data_args(shard_dir: Path) -> list[str]:
    return [
        f"--data.init_args.train_shards={shard_dir}/train-*.tar.gz",
        f"--data.init_args.heldout_shards={shard_dir}/heldout-*.tar.gz",
        "--data.init_args.heldout_prompts=12",
        "--data.init_args.heldout_prompts_per_batch=6",
    ]


SMALL_MODEL = [
    "--model.init_args.model.init_args.hidden_size=64",
    "--model.init_args.model.init_args.num_layers=2",
    "--model.init_args.model.init_args.num_heads=2",
    "--model.init_args.model.init_args.num_kv_heads=1",
    "--model.init_args.model.init_args.intermediate_size=128",
]
SMALL_RL = [
    "--data.init_args.prompts_per_iteration=4",
    "--model.init_args.rollout.init_args.samples_per_prompt=4",
    "--model.init_args.rollout.init_args.max_new_tokens=16",
    "--model.init_args.heldout_max_new_tokens=16",
]


def scalars(log_dir: Path) -> dict[str, list]:
    """Every scalar tag's events, and the text tags under ``__text__``."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]} | {"__text__": events.Tags()["tensors"]}


def exported_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The policy's weights in a Lightning checkpoint (a file, or an FSDP2 distributed-checkpoint folder),
    named as in ``save_pretrained`` (``model.`` prefix of the LightningModule attribute removed)."""
    if path.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        dcp_to_torch_save(path, path.with_suffix(".pt"))
        path = path.with_suffix(".pt")
    state = torch.load(path, weights_only=False, map_location="cpu")["state_dict"]
    return {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}


def same(a, b) -> bool:
    """Equal, tensors included, recursively."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(same, a, b))
    return a == b
