"""Supervised warm-up data: prompt + worked solution, loss on the solution tokens only."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase, ProcessorMixin

from k15.data.encode import concat_model_inputs, encode_prompt
from k15.data.prompts import BatchStream, ShardDataModule

IGNORE_INDEX = -100


@dataclass
class SFTBatch:
    """Right-padded sequences. labels = input_ids on solution tokens (and <eos>), −100 elsewhere. [B, T]
    ``model_inputs``: the batch's extra forward inputs (an image prompt's pixel_values)."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    model_inputs: dict[str, Tensor]


def sft_batch(records: list[dict], tokenizer: PreTrainedTokenizerBase, processor: ProcessorMixin | None = None) -> SFTBatch:
    rows, model_inputs = [], []
    for r in records:
        encoded = encode_prompt(r["prompt"], r.get("images", []), tokenizer, processor)
        prompt = encoded.token_ids
        model_inputs.append(encoded.model_inputs)
        solution = tokenizer(r["solution"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((prompt + solution, [IGNORE_INDEX] * len(prompt) + solution))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    return SFTBatch(input_ids=input_ids, attention_mask=attention_mask, labels=labels, model_inputs=concat_model_inputs(model_inputs))


class SFTDataModule(ShardDataModule):
    """Worked solutions for the long-CoT warm-up: ``steps`` batches of ``examples_per_step`` per epoch.

    Args:
        examples_per_step: sequences per optimizer step.
        steps: optimizer steps per epoch.
        **kwargs: see ``ShardDataModule``.
    """

    def __init__(self, *args, examples_per_step: int = 64, steps: int = 300, **kwargs):
        super().__init__(*args, **kwargs)
        self.examples_per_step = examples_per_step
        self.steps = steps

    def train_dataloader(self) -> DataLoader:
        collate = lambda records: sft_batch(records, self.tokenizer, self.processor)  # noqa: E731
        return DataLoader(BatchStream(self.train_records, collate, self.examples_per_step, self.steps), batch_size=None)
