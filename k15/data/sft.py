"""Supervised warm-up data: prompt + worked solution, loss on the solution tokens only."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from k15.data.encode import ChatFormat, EncodedPrompt, concat_model_inputs, encode_prompt
from k15.data.prompts import ShardDataModule
from k15.data.shards import PROMPT_FIELDS
from k15.errors import require_at_least_one
from k15.padding import pad_rows, padded_ids

IGNORE_INDEX = -100
SFT_FIELDS = PROMPT_FIELDS | {"solution": (str,)}


@dataclass
class SFTBatch:
    """Right-padded sequences. labels = input_ids on solution tokens (and <eos>), −100 elsewhere. [B, T]
    ``model_inputs``: the batch's extra forward inputs (an image prompt's pixel_values)."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    model_inputs: dict[str, Tensor]


@dataclass
class SFTRow:
    """One unpadded sequence: the encoded prompt (in the chat template, where the policy has
    one: the solution is the assistant's turn), then the solution and <eos>."""

    input_ids: list[int]
    labels: list[int]
    model_inputs: dict[str, Tensor]


def sft_row(prompt: EncodedPrompt, solution: str, tokenizer: PreTrainedTokenizerBase) -> SFTRow:
    target = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return SFTRow(prompt.token_ids + target, [IGNORE_INDEX] * len(prompt.token_ids) + target, prompt.model_inputs)


def padded(rows: list[SFTRow], pad_token_id: int) -> SFTBatch:
    input_ids, attention_mask = padded_ids([row.input_ids for row in rows], pad_token_id)
    labels = pad_rows([row.labels for row in rows], IGNORE_INDEX)
    return SFTBatch(input_ids, attention_mask, labels, concat_model_inputs([row.model_inputs for row in rows]))


def sft_batch(
    records: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    processor: ProcessorMixin | None = None,
    chat: ChatFormat | None = None,
) -> SFTBatch:
    rows = [
        sft_row(encode_prompt(r["prompt"], r.get("images", []), tokenizer, processor, chat), r["solution"], tokenizer)
        for r in records
    ]
    return padded(rows, tokenizer.pad_token_id)


class SFTDataModule(ShardDataModule):
    """Worked solutions for the long-CoT warm-up: ``steps`` batches of ``examples_per_step`` per epoch.

    A record whose prompt + solution + <eos> is longer than the model's context is skipped
    (``too_long``), as is one with an image PIL cannot decode (``bad_image``).

    Args:
        examples_per_step: sequences per optimizer step.
        steps: optimizer steps per epoch.
        **kwargs: see ``ShardDataModule``.
    """

    train_fields = SFT_FIELDS
    what = "SFT examples"

    def __init__(self, *args, examples_per_step: int = 64, steps: int = 300, **kwargs):
        super().__init__(*args, **kwargs)
        require_at_least_one("data", examples_per_step=examples_per_step, steps=steps)
        self.examples_per_step = examples_per_step
        self.steps = steps

    def train_dataloader(self) -> DataLoader:
        return self.placeholders(self.steps)

    def draw(self) -> SFTBatch:
        limit = self.token_limit("context_tokens")

        def prepare(record: dict) -> SFTRow | str:
            prompt = self.checked_prompt(record, limit)
            if isinstance(prompt, str):
                return prompt
            row = sft_row(prompt, record["solution"], self.tokenizer)
            return "too_long" if limit is not None and len(row.input_ids) > limit else row

        return padded(self.take(self.examples_per_step, prepare), self.tokenizer.pad_token_id)
