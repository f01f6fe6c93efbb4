"""What a reward model reads and, for the tiny GenRM, writes.

Both reward models (``k15.reward.scalar_rm``, ``k15.reward.generative_rm``) judge the text
``judging_prompt`` renders from (question, reference, response), at training and at judging time
alike. The tiny GenRM is taught by SFT to continue it with ``worked_verdict``: a short comparison,
then the JSON verdict. ``tools/make_rm_shards.py`` writes both into the judging records
(``k15.data.judging``).
"""

from __future__ import annotations

import itertools
import json
import string

from k15.data.arithmetic import ALPHABET
from k15.reward.answer import final_answer

# The reference comes last, next to where a generative judge starts writing: placed before the
# response, the tiny GenRM often copied the response's answer in its stead.
JUDGE_TEMPLATE = "{question}|response:{response}|reference:{reference}|judge:"
# the tiny task's characters + everything the template and a worked verdict write (no whitespace:
# k15.models.tiny.char_tokenizer refuses it)
JUDGE_ALPHABET = ALPHABET + '|{}"_' + string.ascii_lowercase
ANSWER_WIDTH = 8  # a worked verdict pads answers to this many characters (the tiny task's have ≤ 6)


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
    given = final_answer(response, marker)
    got, want = f"{'none' if given is None else given:_<{ANSWER_WIDTH}}", f"{reference:_<{ANSWER_WIDTH}}"
    diff = "".join(mark(a, b) for a, b in itertools.zip_longest(got, want, fillvalue="_"))
    return f"got:{got},want:{want},diff:{diff},{verdict_json(correct)}"
