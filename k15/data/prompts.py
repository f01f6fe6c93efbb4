"""Prompt batches streamed from shards, and the data module RL iterations draw them from.

One training batch = the P prompts of one RL iteration. The rollout callback attaches the
sampled trajectories to it (``batch.rollout``) before ``training_step`` sees it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from k15.data.encode import encode_prompt
from k15.data.shards import REQUIRED_FIELDS, read_records, shard_urls


@dataclass
class PromptBatch:
    """P prompts. ``prompt_ids`` hold each prompt's token ids (with <bos>, unpadded; an image
    prompt's image tokens expanded), ``images`` and ``model_inputs`` its images (see
    ``k15.data.encode``; empty for text prompts)."""

    prompt_ids: list[list[int]]
    prompts: list[str]
    answers: list[str]
    difficulties: list[int]
    images: list[list[bytes]] | None = None  # None: text prompts only
    model_inputs: list[dict[str, Tensor]] | None = None
    keys: list[str] | None = None  # stable prompt ids, where the data module tracks success rates
    rollout: Any = None  # k15.rollout.batch.Rollout, attached by RolloutCallback

    def __post_init__(self):
        self.images = self.images or [[] for _ in self.prompts]
        self.model_inputs = self.model_inputs or [{} for _ in self.prompts]

    def __len__(self) -> int:
        return len(self.prompts)


def prompt_batch(records: list[dict], tokenizer: PreTrainedTokenizerBase, processor: ProcessorMixin | None = None) -> PromptBatch:
    """Records (with their encoded ``images``, if any) → a batch in the policy's tokens."""
    for record in records:
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise ValueError(f"shard record is missing {missing}: {record}")
    encoded = [encode_prompt(r["prompt"], r.get("images", []), tokenizer, processor) for r in records]
    return PromptBatch(
        prompt_ids=[e.token_ids for e in encoded],
        prompts=[r["prompt"] for r in records],
        answers=[str(r["answer"]) for r in records],
        difficulties=[int(r["difficulty"]) for r in records],
        images=[e.images for e in encoded],
        model_inputs=[e.model_inputs for e in encoded],
    )


class BatchStream(IterableDataset):
    """``num_batches`` batches of ``batch_size`` records, each turned into a batch by ``collate``."""

    def __init__(
        self,
        records: Callable[[], Iterator[dict]],
        collate: Callable[[list[dict]], Any],
        batch_size: int,
        num_batches: int,
    ):
        self.records, self.collate = records, collate
        self.batch_size, self.num_batches = batch_size, num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Any]:
        records = self.records()
        for _ in range(self.num_batches):
            chunk = list(itertools.islice(records, self.batch_size))
            if not chunk:
                return
            yield self.collate(chunk)


class ShardDataModule(LightningDataModule):
    """Held-out evaluation prompts from shards; subclasses add the training stream.

    The tokenizer and image processor are the policy's own (``trainer.lightning_module``), so the
    two can never disagree.

    Args:
        train_shards: training shards, a brace pattern or glob.
        heldout_shards: held-out shards, a brace pattern or glob.
        heldout_prompts: how many held-out prompts each evaluation scores.
        heldout_prompts_per_batch: held-out prompts generated together.
        shuffle_buffer: records shuffled in memory while streaming (0 = shard order).
        seed: seeds shard order and shuffling.
    """

    def __init__(
        self,
        train_shards: str,
        heldout_shards: str,
        heldout_prompts: int = 400,
        heldout_prompts_per_batch: int = 200,
        shuffle_buffer: int = 1000,
        seed: int = 0,
    ):
        super().__init__()
        self.train_urls = shard_urls(train_shards)
        self.heldout_urls = shard_urls(heldout_shards)
        self.heldout_prompts = heldout_prompts
        self.heldout_prompts_per_batch = heldout_prompts_per_batch
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.processor: ProcessorMixin | None = None  # a vision-language policy's

    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            self.tokenizer = self.trainer.lightning_module.tokenizer
            self.processor = self.trainer.lightning_module.processor

    def train_records(self) -> Iterator[dict]:
        return read_records(self.train_urls, self.shuffle_buffer, self.seed, loop=True)

    def val_dataloader(self) -> DataLoader:
        # Every rank reads the held-out set and scores its own equal share (rank, rank + world, …):
        # equal batch counts keep sharded generation in step across ranks.
        rank, world = self.trainer.global_rank, self.trainer.world_size
        per_rank = self.heldout_prompts // world

        def records() -> Iterator[dict]:
            heldout = itertools.islice(read_records(self.heldout_urls, split_by_rank=False), self.heldout_prompts)
            return itertools.islice(heldout, rank, per_rank * world, world)

        num_batches = math.ceil(per_rank / self.heldout_prompts_per_batch)
        stream = BatchStream(records, self.collate_prompts, self.heldout_prompts_per_batch, num_batches)
        return DataLoader(stream, batch_size=None)

    def collate_prompts(self, records: list[dict]) -> PromptBatch:
        return prompt_batch(records, self.tokenizer, self.processor)


class PromptDataModule(ShardDataModule):
    """RL prompts: ``iterations`` batches of ``prompts_per_iteration`` prompts per epoch.

    Args:
        prompts_per_iteration: P, prompts whose k samples form one RL iteration.
        iterations: RL iterations per epoch (one batch each).
        **kwargs: see ``ShardDataModule``.
    """

    def __init__(self, *args, prompts_per_iteration: int = 16, iterations: int = 100, **kwargs):
        super().__init__(*args, **kwargs)
        self.prompts_per_iteration = prompts_per_iteration
        self.iterations = iterations

    def train_dataloader(self) -> DataLoader:
        stream = BatchStream(self.train_records, self.collate_prompts, self.prompts_per_iteration, self.iterations)
        return DataLoader(stream, batch_size=None)
