"""Judging records for reward models: is this response to this question correct, given the reference?

    {"question": "Q:57+68=", "reference": "125", "response": "7+8+0=15,5+6+1=12,A:125",
     "correct": true, "reason": "match", "kind": "teacher", "difficulty": 2,
     "prompt": <judging_prompt(...)>, "solution": <worked_verdict(...)>, "answer": "true"}

``correct`` is the label (the rule verifier's, for the tiny task). A scalar reward model reads
the judging prompt and predicts it; a generative one (GenRM) is taught by SFT to continue the
prompt with ``solution`` — a short comparison, then the JSON verdict — so ``prompt``,
``solution`` and ``answer`` make the same record an SFT record (``k15.data.sft``). Both reward
models render their inputs with ``judging_prompt``, at training and at judging time alike.
"""

from __future__ import annotations

import itertools
import json
import string
from dataclasses import dataclass

import torch
from torch import Tensor

from k15.data.arithmetic import ALPHABET
from k15.data.sft import SFTDataModule
from k15.reward.answer import FinalAnswerMatch

# The reference comes last, next to where a generative judge starts writing: placed before the
# response, the tiny GenRM often copied the response's answer in its stead.
JUDGE_TEMPLATE = "{question}|response:{response}|reference:{reference}|judge:"
# the tiny task's characters + everything the template and a worked verdict write (no whitespace:
# k15.models.tiny.char_tokenizer refuses it)
JUDGE_ALPHABET = ALPHABET + '|{}"_' + string.ascii_lowercase
ANSWER_WIDTH = 8  # a worked verdict pads answers to this many characters (the tiny task's have ≤ 6)
JUDGING_FIELDS = {"question": (str,), "reference": (str, int, float), "response": (str,), "correct": (bool, int)}


def judging_prompt(question: str, reference: str, response: str, template: str = JUDGE_TEMPLATE) -> str:
    """The text a reward model judges. ``template`` has the fields {question}, {reference}, {response}."""
    return template.format(question=question, reference=reference, response=response)


def verdict_json(correct: bool) -> str:
    """``{"correct":true}`` — compact, so a character tokenizer needs no whitespace."""
    return json.dumps({"correct": correct}, separators=(",", ":"))


def mark(a: str, b: str) -> str:
    """One column of a worked verdict's comparison: (a − b) mod 10 for two digits, else ``=``
    (same character, e.g. both padding) or ``x`` (different)."""
    if a.isdigit() and b.isdigit():
        return str((int(a) - int(b)) % 10)
    return "=" if a == b else "x"


def worked_verdict(response: str, reference: str, correct: bool, marker: str = "A:") -> str:
    """What the tiny GenRM learns to write: the response's final answer and the reference, each
    padded with ``_`` to ``ANSWER_WIDTH`` characters, their column-by-column difference
    (``mark``), then the verdict — correct iff every column is ``0`` or ``=``:

        got:12462___,want:12463___,diff:00009===,{"correct":false}
        got:none____,…                                   when the response gives no answer

    Why this shape: a tiny model copies strings easily but compares them poorly. Trained on the
    bare ``got:…,want:…,{verdict}`` it copied 99% of the answers right and still guessed its
    verdicts on near misses (about half right). Fixed-width fields put every compared pair of
    characters at the same distance (the k-th diff column is 14 characters after the
    reference's k-th, 28 after the answer's), and the columns give each comparison its own
    target; the verdict then only asks "is any column not 0?". Even so the columns are learned
    late (conf/tiny_rm_generative.yaml: held-out agreement 74.5% after 400 steps, 96% after 800).
    """
    given = FinalAnswerMatch(marker).extract(response)
    got, want = f"{'none' if given is None else given:_<{ANSWER_WIDTH}}", f"{reference:_<{ANSWER_WIDTH}}"
    diff = "".join(mark(a, b) for a, b in itertools.zip_longest(got, want, fillvalue="_"))
    return f"got:{got},want:{want},diff:{diff},{verdict_json(correct)}"


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
