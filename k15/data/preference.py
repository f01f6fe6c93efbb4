"""Preference pairs for DPO: a prompt, a chosen response y_w and a rejected one y_l, from shards.

A record is an RL prompt record plus the two responses (``tools/long2short_samples.py --pairs-out``
writes them):

    {"prompt": str, "answer": str, "difficulty": int, "chosen": str, "rejected": str, …}

Each response becomes a sequence as an SFT solution does (``k15.data.sft.sft_row``: the prompt in
the policy's format, then the response and <eos>, labels on the response), so DPO scores exactly
the tokens SFT would train.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import DataLoader

from k15.data.prompts import ShardDataModule
from k15.data.sft import SFTBatch, SFTRow, padded, sft_row
from k15.data.shards import PROMPT_FIELDS
from k15.errors import require_at_least_one

PREFERENCE_FIELDS = PROMPT_FIELDS | {"chosen": (str,), "rejected": (str,)}


@dataclass
class PreferenceBatch(SFTBatch):
    """B pairs as one right-padded batch of 2B sequences [2B, T]: rows [0, B) are the chosen
    responses y_w, rows [B, 2B) the rejected y_l of the same prompts in the same order, so one
    packed forward scores both. labels: the response tokens (and <eos>), −100 elsewhere."""

    def __len__(self) -> int:
        return len(self.input_ids) // 2


def preference_batch(pairs: list[tuple[SFTRow, SFTRow]], pad_token_id: int) -> PreferenceBatch:
    """(chosen row, rejected row) pairs → chosen rows first, then rejected rows."""
    batch = padded([chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs], pad_token_id)
    return PreferenceBatch(batch.input_ids, batch.attention_mask, batch.labels, batch.model_inputs)


class PreferenceDataModule(ShardDataModule):
    """Preference pairs for DPO: ``steps`` batches of ``pairs_per_step`` per epoch.

    A pair whose prompt + longer response + <eos> is longer than the model's context is skipped
    (``too_long``), as is one with an image PIL cannot decode (``bad_image``). Held-out prompts
    are plain prompt records, scored by the policy's greedy held-out accuracy.

    Args:
        pairs_per_step: preference pairs per optimizer step (2 × as many sequences).
        steps: optimizer steps per epoch.
        **kwargs: see ``ShardDataModule``.
    """

    train_fields = PREFERENCE_FIELDS
    what = "preference pairs"

    def __init__(self, *args, pairs_per_step: int = 32, steps: int = 100, **kwargs):
        super().__init__(*args, **kwargs)
        require_at_least_one("data", pairs_per_step=pairs_per_step, steps=steps)
        self.pairs_per_step = pairs_per_step
        self.steps = steps

    def train_dataloader(self) -> DataLoader:
        return self.placeholders(self.steps)

    def draw(self) -> PreferenceBatch:
        limit = self.token_limit("context_tokens")

        def prepare(record: dict) -> tuple[SFTRow, SFTRow] | str:
            prompt = self.checked_prompt(record, limit)
            if isinstance(prompt, str):
                return prompt
            pair = tuple(sft_row(prompt, record[side], self.tokenizer) for side in ("chosen", "rejected"))
            return "too_long" if limit is not None and max(len(row.input_ids) for row in pair) > limit else pair

        return preference_batch(self.take(self.pairs_per_step, prepare), self.tokenizer.pad_token_id)
