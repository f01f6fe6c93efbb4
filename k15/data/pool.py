"""PromptPool: an RL prompt set read once from WebDataset shards into memory.

Prioritized sampling needs every prompt's success rate and the freedom to draw any prompt, so the
prompt set (text, answers, difficulty labels, image bytes: small next to the model) is held in
memory, where the sampler and the success table live, not in a data-loader worker's copy.

Bad input loses one sample, never the run: each skipped sample is counted by reason

    corrupt_shard     a truncated or corrupt tar/gzip (counted once per shard; the rest of it is lost)
    undecodable_json  the json member is not UTF-8 JSON
    missing_field     a required field is absent or has the wrong type
    empty_prompt      the prompt is empty or only whitespace
    bad_image         an image member that PIL cannot decode

and only a set with no usable record at all is an error (one message, at start-up).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

from k15.data.shards import image_decodes, record_problem, sample_images


@dataclass
class PromptPool:
    """Parallel lists, one entry per usable record, in shard order."""

    keys: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    difficulties: list[int] = field(default_factory=list)
    images: list[list[bytes]] = field(default_factory=list)  # encoded, in member-name order
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.keys)


def check_record(sample: dict) -> tuple[dict, list[bytes]] | str:
    """The record and its images, or the reason to skip the sample."""
    try:
        record = json.loads(sample["json"].decode("utf-8"))
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
        return "undecodable_json"
    problem = record_problem(record)
    if problem:
        return problem
    images = sample_images(sample)
    if not all(image_decodes(data) for data in images):
        return "bad_image"
    return record, images


def gzip_intact(path: str) -> bool:
    try:
        with gzip.open(path) as stream:
            while stream.read(1 << 20):
                pass
        return True
    except (OSError, EOFError, zlib.error):
        return False


def load_pool(urls: list[str]) -> PromptPool:
    """Read every record of ``urls`` (every rank reads all of them: the sampler picks per rank)."""
    pool, corrupt = PromptPool(), set()

    def note_corrupt(error: Exception) -> bool:
        # one shard can raise several errors (gzip, then tar); WebDataset puts its URL in the args
        text = " ".join(map(str, error.args))
        corrupt.add(next((url for url in urls if url in text), text))
        return True  # go on with the next shard

    # a gzip cut between two tar members reads as a shorter, intact tar: only the gzip stream's
    # own end check tells, so read local .gz shards through it once (cheap next to tokenizing)
    corrupt.update(url for url in urls if url.endswith(".gz") and not gzip_intact(url))
    samples = wds.WebDataset(urls, shardshuffle=False, nodesplitter=lambda u: u, workersplitter=lambda u: u,
                             handler=note_corrupt, empty_check=False)
    for sample in samples:
        checked = check_record(sample)
        if isinstance(checked, str):
            pool.skipped[checked] += 1
            continue
        record, images = checked
        pool.keys.append(f"{Path(sample['__url__']).name}:{sample['__key__']}")  # stable across checkouts
        pool.prompts.append(record["prompt"])
        pool.answers.append(str(record["answer"]))
        pool.difficulties.append(record["difficulty"])
        pool.images.append(images)
    if corrupt:
        pool.skipped["corrupt_shard"] = len(corrupt)
    if not pool.keys:
        raise ValueError(f"no usable prompt records in {len(urls)} shard(s) ({urls[0]}, …); skipped: {dict(pool.skipped)}")
    return pool
