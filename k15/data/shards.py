"""WebDataset shards of task records: write them, check them, and stream them back.

A record is one JSON object per sample, stored as ``<key>.json`` inside the tar, with zero or
more images beside it (``<key>.png``, ``<key>.jpg``, or ``<key>.0.png``, ``<key>.1.png``, …):

    {"prompt": str, "answer": str, "difficulty": int, "solution": str, "domain": str, "source": str}

``solution`` (a worked chain of thought ending in the answer) is what SFT imitates; RL only needs
prompt, answer and difficulty.
"""

from __future__ import annotations

import glob
import io
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import webdataset as wds
from PIL import Image
from webdataset.shardlists import expand_urls

REQUIRED_FIELDS = ("prompt", "answer", "difficulty")
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")


def record_problem(record) -> str | None:
    """Why ``record`` cannot be an RL prompt (``missing_field``, ``empty_prompt``), or None."""
    if not isinstance(record, dict) or any(f not in record for f in REQUIRED_FIELDS) or type(record["difficulty"]) is not int:
        return "missing_field"
    if not isinstance(record["prompt"], str) or not record["prompt"].strip():
        return "empty_prompt"
    return None


def sample_images(sample: dict) -> list[bytes]:
    """A WebDataset sample's image members, encoded, in member-name order."""
    return [sample[name] for name in sorted(sample) if name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS]


def image_decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except Exception:  # PIL raises several types for broken files
        return False


def write_shards(records: Iterable[dict], pattern: str, records_per_shard: int = 5000) -> int:
    """Write ``records`` to tar shards named by ``pattern`` (e.g. ``shards/x/train-%06d.tar``)."""
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with wds.ShardWriter(pattern, maxcount=records_per_shard, verbose=0) as sink:
        for count, record in enumerate(records, start=1):
            sink.write({"__key__": f"{count - 1:08d}", "json": record})
    return count


def shard_urls(pattern: str) -> list[str]:
    """Brace patterns (``train-{000000..000003}.tar``) and globs (``train-*.tar``) to a sorted list."""
    urls = sorted(u for part in expand_urls(pattern) for u in (glob.glob(part) or [part]))
    missing = [u for u in urls if "://" not in u and not Path(u).exists()]
    if not urls or missing:
        raise FileNotFoundError(f"no shards match {pattern!r}" + (f" (missing: {missing[:3]})" if missing else ""))
    return urls


def _all_shards(urls):
    return urls


def read_records(
    urls: list[str], shuffle_buffer: int = 0, seed: int = 0, loop: bool = False, split_by_rank: bool = True
) -> Iterator[dict]:
    """Stream the JSON records of ``urls``, each with its encoded images under ``images``; with
    ``loop`` restart forever, reshuffled each pass.

    With ``split_by_rank`` each rank (and data-loader worker) reads its own subset of the shards;
    without it every rank reads them all.
    """
    epoch = 0
    while True:
        order = list(urls)
        if shuffle_buffer:
            random.Random(seed + epoch).shuffle(order)
        dataset = wds.WebDataset(
            order, shardshuffle=False, nodesplitter=wds.split_by_node if split_by_rank else _all_shards, empty_check=False
        ).decode()
        if shuffle_buffer:
            dataset = dataset.shuffle(shuffle_buffer, rng=random.Random(seed + epoch))
        count = 0
        for count, sample in enumerate(dataset, start=1):
            yield sample["json"] | {"images": sample_images(sample)}
        if not loop:
            return
        if count == 0:  # looping over nothing would spin forever
            raise ValueError(
                f"no records for this process in {len(urls)} shard(s): with split_by_rank, every rank "
                "and data-loader worker needs at least one shard of its own"
            )
        epoch += 1
