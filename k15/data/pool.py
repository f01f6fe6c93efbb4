"""PromptPool: an RL prompt set read once from WebDataset shards into memory.

Prioritized sampling needs every prompt's success rate and the freedom to draw any prompt, so the
prompt set (text, answers, difficulty labels, image bytes: small next to the model) is held in
memory, where the sampler and the success table live, not in a data-loader worker's copy.

It is read with the reader every data path shares (``k15.data.shards.read_records``; every rank
reads every shard), so bad samples are skipped and counted the same way (``PromptPool.skipped``),
and only a set with no usable record at all is an error (one message, at start-up).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from k15.data.shards import read_records, skip_summary
from k15.errors import K15Error


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


def load_pool(
    urls: list[str], check: Callable[[dict], str | None] | None = None, source: str | None = None
) -> PromptPool:
    """Every usable RL prompt record of ``urls``.

    ``check(record)`` may skip more records, returning the reason to count them under (the data
    module's ``too_long``). ``source`` names the set in the error raised when nothing is usable.
    """
    pool = PromptPool()
    for record in read_records(urls, pool.skipped, split_by_rank=False):
        problem = check(record) if check else None
        if problem:
            pool.skipped[problem] += 1
            continue
        pool.keys.append(record["__key__"])  # k15.data.shards.pool_key: stable across checkouts
        pool.prompts.append(record["prompt"])
        pool.answers.append(str(record["answer"]))
        pool.difficulties.append(record["difficulty"])
        pool.images.append(record["images"])
    if not pool.keys:
        source = source or f"{len(urls)} shard(s) ({urls[0]}, …)"
        raise K15Error(f"no usable RL prompt record in {source}; skipped: {skip_summary(pool.skipped)}")
    return pool
