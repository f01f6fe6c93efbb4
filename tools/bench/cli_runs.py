"""Real ``python -m k15 fit`` runs under FSDP2 on 2 gloo processes, read back from TensorBoard
(imported as ``cli_runs`` by the benchmarks that time whole iterations: sync.py, step.py --fsdp2)."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from k15.data.arithmetic import ALPHABET
from k15.models.tiny import char_tokenizer, tiny_qwen2

ROOT = Path(__file__).resolve().parents[2]


def real_vocab_model(folder: Path, vocab_size: int, hidden_size: int, num_layers: int) -> Path:
    """A random Qwen2 of this shape whose embedding and head have ``vocab_size`` rows (152,064 as
    Qwen2.5's: the weights a sync moves are then mostly what a real model's are), saved with the
    tiny task's character tokenizer (ids past it are never prompted, and decode to nothing)."""
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_qwen2(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=hidden_size // 64,
        num_kv_heads=2,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=256,
    )
    model.resize_token_embeddings(vocab_size)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fsdp2_fit(model: Path, workdir: Path, name: str, engine: str, iterations: int, *overrides: str) -> dict:
    """``conf/tiny.yaml`` + ``conf/strategy/fsdp2.yaml`` on 2 processes with ``model`` and the
    ``vllm`` (one engine per rank) or ``hf`` engine; every scalar the run logged, by tag."""
    engines = {
        "vllm": "{class_path: k15.rollout.vllm.VLLMEngine, init_args: {max_model_len: 256, kv_cache_gib: 0.25}}",
        "hf": "k15.rollout.HFEngine",
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        *(sys.executable, "-m", "k15", "fit", "-c", str(ROOT / "conf/tiny.yaml")),
        *("-c", str(ROOT / "conf/strategy/fsdp2.yaml")),
        f"--model.init_args.model.init_args.path={model}",
        f"--model.init_args.rollout.init_args.engine={engines[engine]}",
        f"--data.init_args.train_shards={ROOT}/shards/addition/train-*.tar.gz",
        f"--data.init_args.heldout_shards={ROOT}/shards/addition/heldout-*.tar.gz",
        f"--data.init_args.iterations={iterations}",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.val_check_interval={iterations}",
        "--data.init_args.heldout_prompts=8",
        "--model.init_args.heldout_max_new_tokens=8",
        f"--trainer.logger.init_args.name={name}",
        "--trainer.callbacks=[k15.summary.RunSummary]",
        *overrides,
    ]
    env = os.environ | {"MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    events = EventAccumulator(str(workdir / "runs" / name / "version_0"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def steady(values: list[float]) -> float:
    """The median after the first iteration (which builds the engine and warms every cache)."""
    return statistics.median(values[1:])
