"""Judging records for reward models: is this response to this question correct, given the reference?

    {"question": "Q:57+68=", "reference": "125", "response": "7+8+0=15,5+6+1=12,A:125",
     "correct": true, "reason": "match", "kind": "teacher", "difficulty": 2,
     "prompt": <judging_prompt(...)>, "solution": <worked_verdict(...)>, "answer": "true"}

``correct`` is the label (the rule verifier's, for the tiny task). A scalar reward model reads
the judging prompt and predicts it; a generative one (GenRM) is taught by SFT to continue the
prompt with ``solution`` — a short comparison, then the JSON verdict — so ``prompt``,
``solution`` and ``answer`` make the same record an SFT record (``k15.data.sft``). What the
prompt and the solution look like is the reward models' business: ``k15.reward.judge_prompt``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from k15.data.sft import SFTDataModule

JUDGING_FIELDS = {"question": (str,), "reference": (str, int, float), "response": (str,), "correct": (bool, int)}


@dataclass
class JudgingBatch:
    """B judging records; ``correct`` the labels as [B] floats in {0, 1}."""

    questions: list[str]
    references: list[str]
    responses: list[str]
    correct: Tensor

    def __len__(self) -> int:
        return len(self.questions)


def judging_batch(records: list[dict]) -> JudgingBatch:
    for record in records:
        missing = [f for f in JUDGING_FIELDS if f not in record]
        if missing:
            raise ValueError(f"judging record is missing {missing} (make them with tools/make_rm_shards.py): {record}")
    return JudgingBatch(
        questions=[r["question"] for r in records],
        references=[str(r["reference"]) for r in records],
        responses=[r["response"] for r in records],
        correct=torch.tensor([float(bool(r["correct"])) for r in records]),
    )


class JudgingDataModule(SFTDataModule):
    """Labelled judging records for a scalar reward model: ``steps`` batches of
    ``examples_per_step`` per epoch; the held-out set (``heldout_prompts`` records) scored as
    ``JudgingBatch`` es too. Records need ``JUDGING_FIELDS``. The reward model renders its own
    prompt from them and has no token limit to check it against, so no length is checked here.
    Arguments: see ``SFTDataModule``.
    """

    train_fields = heldout_fields = JUDGING_FIELDS
    what = "judging records"

    def draw(self) -> JudgingBatch:
        return judging_batch(self.take(self.examples_per_step, lambda record: record))

    def prompt_problem(self, record: dict, limit: int | None) -> None:
        return None  # no policy prompt to encode

    def collate_prompts(self, records: list[dict]) -> JudgingBatch:
        return judging_batch(records)
