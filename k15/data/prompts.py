"""Prompt batches from shards, and the data modules' shared machinery (``ShardDataModule``).

One training batch = the P prompts of one RL iteration. The rollout callback attaches the
sampled trajectories to it (``batch.rollout``) before ``training_step`` sees it.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch.distributed as dist
from lightning.fabric.utilities.rank_zero import rank_zero_info
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from k15.data.encode import ChatFormat, EncodedPrompt, encode_prompt
from k15.data.shards import PROMPT_FIELDS, RecordStream, image_decodes, read_records, shard_urls, skip_summary
from k15.errors import K15Error, require_at_least_one
from k15.metrics import log_iteration


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


def prompt_batch(
    records: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    processor: ProcessorMixin | None = None,
    chat: ChatFormat | None = None,
) -> PromptBatch:
    """Records (with their encoded ``images``, if any) → a batch in the policy's tokens, each
    prompt in ``chat``'s template (None: plain text)."""
    for record in records:
        missing = [f for f in PROMPT_FIELDS if f not in record]
        if missing:
            raise ValueError(f"shard record is missing {missing}: {record}")
    return encoded_prompt_batch(
        [(r, encode_prompt(r["prompt"], r.get("images", []), tokenizer, processor, chat)) for r in records]
    )


def encoded_prompt_batch(pairs: list[tuple[dict, EncodedPrompt]]) -> PromptBatch:
    """(record, its encoded prompt) pairs → a batch."""
    return PromptBatch(
        prompt_ids=[e.token_ids for _, e in pairs],
        prompts=[r["prompt"] for r, _ in pairs],
        answers=[str(r["answer"]) for r, _ in pairs],
        difficulties=[int(r["difficulty"]) for r, _ in pairs],
        images=[e.images for _, e in pairs],
        model_inputs=[e.model_inputs for _, e in pairs],
    )


class Batches(IterableDataset):
    """``items`` in consecutive batches of ``batch_size``, each turned into a batch by ``collate``
    (iterable, so Lightning adds no sampler that would split a rank's share again)."""

    def __init__(self, items: list, collate: Callable[[list], Any], batch_size: int):
        self.items, self.collate, self.batch_size = items, collate, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, len(self.items), self.batch_size):
            yield self.collate(self.items[start : start + self.batch_size])


# Lightning warns on every mid-epoch resume that a loader without state_dict cannot resume. Ours
# yields placeholders only; the data module draws the batches and carries the stream's position.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


class IterationIndices(IterableDataset):
    """0, 1, …, n − 1: placeholders the data module turns into training batches when consumed."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))


def all_ranks(value: Any) -> list:
    """``value`` from every process, in rank order ([value] in a single process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


class ShardDataModule(LightningDataModule):
    """Shards in, batches out: the held-out set, and a training stream that resumes exactly.

    Training batches are made when the loop consumes them. The data loader yields only
    iteration indices, and ``on_before_batch_transfer`` (which Lightning runs in the main
    process for each batch the loop consumes) turns each into a batch (``draw``). Counted at the
    loader, positions would be off by one: Lightning's fetcher prefetches a batch ahead. The
    records come from one ``RecordStream`` kept across epochs (an epoch goes on where the last
    one stopped); its position (valid records pulled: used, or skipped as too long or for a bad
    image) and skip counts are the checkpoint state, per rank, and a resumed run fast-forwards
    its stream there. A stream counts the skips of every pass it reads.

    Beyond the reader's skips (``k15/data/shards.py``), a record the policy has no room for is
    skipped as ``too_long``, counted in the policy's tokens (image tokens included) against the
    lightning module's ``max_rollout_prompt_tokens`` (RL prompts), ``max_heldout_prompt_tokens``
    (held-out prompts) or ``context_tokens`` (an SFT prompt + solution + <eos>); a module without
    the limit (a scalar reward model) checks no length. The counts are printed once at the first
    read (rank 0) and logged as ``data/skipped/<reason>`` (cumulative, every iteration) and
    ``heldout/skipped/<reason>`` (once). A set with nothing usable is a ``K15Error`` naming it.

    Subclasses say what a training batch is (``train_dataloader`` = ``placeholders(batches per
    epoch)``, ``draw``). The tokenizer, image processor and prompt format (chat template or plain
    text) are the policy's own (``trainer.lightning_module``), so the two can never disagree; a
    prompt's length is counted as the policy reads it, template included.

    Args:
        train_shards: training shards, a brace pattern or glob.
        heldout_shards: held-out shards, a brace pattern or glob.
        heldout_prompts: how many held-out prompts each evaluation scores.
        heldout_prompts_per_batch: held-out prompts generated together.
        shuffle_buffer: records shuffled in memory while streaming (0 = shard order).
        seed: seeds shard order and shuffling.
    """

    train_fields = PROMPT_FIELDS  # required record fields and their types (see k15.data.shards)
    heldout_fields = PROMPT_FIELDS
    what = "RL prompts"  # what a record is, for the start-up lines

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
        require_at_least_one(
            "data", heldout_prompts=heldout_prompts, heldout_prompts_per_batch=heldout_prompts_per_batch
        )
        self.train_shards, self.heldout_shards = train_shards, heldout_shards
        self.train_urls = shard_urls(train_shards)
        self.heldout_urls = shard_urls(heldout_shards)
        self.heldout_prompts = heldout_prompts
        self.heldout_prompts_per_batch = heldout_prompts_per_batch
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.processor: ProcessorMixin | None = None  # a vision-language policy's
        self.prompt_format: ChatFormat | None = None  # None: plain-text prompts
        self.heldout: list[dict] | None = None  # the usable held-out records, read once
        self.announced = False

    @cached_property
    def stream(self) -> RecordStream:
        return RecordStream(
            self.train_urls, self.train_fields, self.shuffle_buffer, self.seed, f"train_shards {self.train_shards!r}"
        )

    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            self.tokenizer = self.trainer.lightning_module.tokenizer
            self.processor = self.trainer.lightning_module.processor
            self.prompt_format = self.trainer.lightning_module.prompt_format

    # -- training: drawn when consumed

    def placeholders(self, batches: int) -> DataLoader:
        return DataLoader(IterationIndices(batches), batch_size=None)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return self.draw() if isinstance(batch, int) else batch  # an int is a training placeholder

    def draw(self) -> Any:
        """The next training batch."""
        raise NotImplementedError

    def take(self, n: int, prepare: Callable[[dict], Any]) -> list:
        """The stream's next ``n`` usable items (``prepare``: a record → an item, or why to skip it)."""
        items = self.stream.take(n, prepare)
        if not self.announced:
            self.announced = True
            rank_zero_info(
                f"k15: streaming {self.what} from {len(self.train_urls)} shard(s) of {self.train_shards!r}; "
                f"skipped so far: {skip_summary(self.stream.skipped)}"
            )
        self.log_skipped(self.stream.skipped)
        return items

    def log_skipped(self, skipped: Counter, prefix: str = "data/skipped/") -> None:
        if skipped:  # at the RL iteration (SFT step) the batch is for; loggers write on rank 0
            step = self.trainer.fit_loop.epoch_loop.batch_progress.total.completed
            log_iteration(self.trainer, {f"{prefix}{reason}": n for reason, n in sorted(skipped.items())}, step)

    def token_limit(self, name: str) -> int | None:
        """The lightning module's token limit ``name``; None for a module without it (a reward model)."""
        module = self.trainer.lightning_module
        return getattr(module, name) if hasattr(type(module), name) else None

    def checked_prompt(self, record: dict, limit: int | None) -> EncodedPrompt | str:
        """The record's prompt in the policy's tokens, or why to skip it: ``bad_image`` (PIL
        cannot decode one of its images) or ``too_long`` (more than ``limit`` tokens)."""
        if not all(image_decodes(image) for image in record["images"]):
            return "bad_image"
        encoded = encode_prompt(record["prompt"], record["images"], self.tokenizer, self.processor, self.prompt_format)
        return "too_long" if limit is not None and len(encoded.token_ids) > limit else encoded

    def prompt_problem(self, record: dict, limit: int | None) -> str | None:
        checked = self.checked_prompt(record, limit)
        return checked if isinstance(checked, str) else None

    def state_dict(self) -> dict:
        """Every rank's stream position and skip counts (every rank calls this at checkpoint time)."""
        return {"streams": all_ranks({"position": self.stream.position, "skipped": dict(self.stream.skipped)})}

    def load_state_dict(self, state_dict: dict) -> None:
        streams, world = state_dict["streams"], self.trainer.world_size
        if len(streams) != world:
            raise K15Error(
                f"the checkpoint's data streams are those of {len(streams)} process(es), this run has {world}: "
                "resume with as many processes as the run had (each reads its own shards)"
            )
        self.stream.restore(**streams[self.trainer.global_rank])

    # -- held-out

    def heldout_records(self) -> list[dict]:
        """The first ``heldout_prompts`` usable held-out records, read once; every rank reads them all."""
        if self.heldout is None:
            limit = self.token_limit("max_heldout_prompt_tokens")
            skipped, usable = Counter(), []
            for record in read_records(
                self.heldout_urls, skipped, self.heldout_fields, split_by_rank=False, check_images=False
            ):
                problem = self.prompt_problem(record, limit)
                if problem:
                    skipped[problem] += 1
                    continue
                usable.append(record)
                if len(usable) == self.heldout_prompts:
                    break
            if not usable:
                raise K15Error(
                    f"no usable held-out record in heldout_shards {self.heldout_shards!r}; skipped: "
                    f"{skip_summary(skipped)}"
                )
            rank_zero_info(f"k15: {len(usable)} held-out {self.what} loaded; skipped: {skip_summary(skipped)}")
            self.log_skipped(skipped, "heldout/skipped/")
            self.heldout = usable
        return self.heldout

    def val_dataloader(self) -> DataLoader:
        # Every rank scores its own equal share (rank, rank + world, …): equal batch counts keep
        # sharded generation in step across ranks.
        records, rank, world = self.heldout_records(), self.trainer.global_rank, self.trainer.world_size
        per_rank = len(records) // world
        if per_rank == 0:
            raise K15Error(
                f"heldout_shards {self.heldout_shards!r}: {len(records)} usable record(s) for {world} processes"
            )
        return DataLoader(
            Batches(records[rank : per_rank * world : world], self.collate_prompts, self.heldout_prompts_per_batch),
            batch_size=None,
        )

    def collate_prompts(self, records: list[dict]) -> PromptBatch:
        return prompt_batch(records, self.tokenizer, self.processor, self.prompt_format)


class PromptDataModule(ShardDataModule):
    """RL prompts streamed from shards: ``iterations`` batches of ``prompts_per_iteration`` per epoch.

    Args:
        prompts_per_iteration: P, prompts whose k samples form one RL iteration.
        iterations: RL iterations per epoch (one batch each).
        **kwargs: see ``ShardDataModule``.
    """

    def __init__(self, *args, prompts_per_iteration: int = 16, iterations: int = 100, **kwargs):
        super().__init__(*args, **kwargs)
        require_at_least_one("data", prompts_per_iteration=prompts_per_iteration, iterations=iterations)
        self.prompts_per_iteration = prompts_per_iteration
        self.iterations = iterations

    def train_dataloader(self) -> DataLoader:
        return self.placeholders(self.iterations)

    def draw(self) -> PromptBatch:
        limit = self.token_limit("max_rollout_prompt_tokens")

        def prepare(record: dict) -> tuple[dict, EncodedPrompt] | str:
            encoded = self.checked_prompt(record, limit)
            return encoded if isinstance(encoded, str) else (record, encoded)

        return encoded_prompt_batch(self.take(self.prompts_per_iteration, prepare))
