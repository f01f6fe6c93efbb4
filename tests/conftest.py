import os
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

    source = TinyQwen2(alphabet, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)  # head_dim 32: the smallest vLLM CPU attention takes
    path = tmp_path_factory.mktemp("tiny")
    source.model().save_pretrained(path)
    source.tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory) -> Path:
    """Small train/held-out shards written by the real tools/make_shards.py."""
    out = tmp_path_factory.mktemp("shards")
    subprocess.run(
        [sys.executable, str(ROOT / "tools/make_shards.py"), "--out", str(out), "--train", "300", "--heldout", "40", "--records-per-shard", "100"],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return out
