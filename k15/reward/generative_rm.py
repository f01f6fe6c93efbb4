"""Chain-of-thought generative reward model (GenRM, k1.5 §2.3.5): a causal LM reads a judging
prompt (question, reference answer, response), reasons, and ends with a JSON verdict.

    prompt   Q:57+65=|response:7+5+0=12,5+6+0=11,A:112|reference:122|judge:
    output   got:112_____,want:122_____,diff:=x======,{"correct":false}     → Verdict(False, "reject")

The verdict is the last JSON object in the output that has a ``correct`` key, read leniently
(``parse_verdict``); output without one is ``Verdict(False, "invalid")`` and counted in
``reward/verifier/invalid``. Decoding is greedy, so a verdict is a function of its prompt.
"""

from __future__ import annotations

import json

import json_repair

from k15.generation import Request, Sampling, hf_sample
from k15.models import ModelSource
from k15.reward.answer import Verdict, Verifier
from k15.reward.judge_prompt import JUDGE_TEMPLATE
from k15.reward.model_judge import ModelJudge

TRUE_WORDS = {"true", "yes", "y", "correct", "1"}
FALSE_WORDS = {"false", "no", "n", "incorrect", "wrong", "0"}


def as_bool(value) -> bool | None:
    """true/false, True/False, "yes"/"no", "correct"/"incorrect", 1/0 → bool; anything else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None
    return None


def object_at(text: str, start: int) -> dict | None:
    """The JSON object that starts at ``text[start] == "{"``: strict JSON first (nested values and
    braces inside strings allowed), else the flat block up to the next ``}`` as ``json-repair``
    mends it (single quotes, bare keys, Python's True/False/None, trailing commas)."""
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
        return value if isinstance(value, dict) else None
    except (ValueError, RecursionError):
        pass
    end = text.find("}", start)
    if end < 0 or "{" in text[start + 1 : end]:
        return None
    value = json_repair.loads(text[start : end + 1])
    return value if isinstance(value, dict) else None


def parse_verdict(text: str, key: str = "correct") -> bool | None:
    """The verdict of a judge's output: ``key``'s value in the last JSON object that has it.

    "Last" is the object starting furthest right, so reasoning may quote verdicts before the
    final one; objects without ``key`` (matched case-insensitively) are skipped. Code fences and
    any text around the object are ignored. None when no object carries a readable verdict.
    """
    for start in reversed([i for i, c in enumerate(text) if c == "{"]):
        obj = object_at(text, start)
        if obj is None:
            continue
        values = [as_bool(v) for k, v in obj.items() if isinstance(k, str) and k.strip().lower() == key.lower()]
        if values and values[-1] is not None:
            return values[-1]
    return None


def verdict_of(text: str) -> Verdict:
    """A judge's output → ``accept``, ``reject`` or ``invalid`` (no readable verdict: not correct)."""
    correct = parse_verdict(text)
    return Verdict(False, "invalid") if correct is None else Verdict(correct, "accept" if correct else "reject")


class GenerativeRM(ModelJudge):
    """A causal LM as the correctness judge: greedy chain of thought, then a JSON verdict.

    In the RL job it runs on the policy's device, frozen (see ``k15.reward.model_judge``).

    Args:
        model: the judge's weights and tokenizer, e.g. ``k15.models.Pretrained`` of a GenRM export.
        prompt_template: the judging prompt, with fields {question}, {reference}, {response};
            the default is the one the tiny GenRM is trained on (``k15.reward.judge_prompt``).
        max_new_tokens: generation budget for reasoning + verdict; a judge cut off before its
            verdict is ``invalid``.
        max_judgements: most responses judged in one ``generate`` (one judging prompt each).
    """

    counted = ("invalid",)  # judgements without a readable verdict

    def __init__(
        self,
        model: ModelSource,
        prompt_template: str = JUDGE_TEMPLATE,
        max_new_tokens: int = 64,
        max_judgements: int = 256,
    ):
        super().__init__(model.model(), model.tokenizer(), prompt_template)
        self.max_new_tokens = max_new_tokens
        self.max_judgements = max_judgements

    def outputs(self, questions: list[str], completions: list[str], answers: list[str]) -> list[str]:
        """The judge's raw text for each response: reasoning, then (if all goes well) the verdict."""
        if not completions:
            return []
        prompt_ids = self.tokenizer(self.prompts(questions, completions, answers))["input_ids"]
        generated = hf_sample(
            self.model,
            [Request(ids, 1, self.max_new_tokens) for ids in prompt_ids],
            Sampling(temperature=0.0),
            self.max_judgements,
        )
        return self.tokenizer.batch_decode([g[0].token_ids for g in generated], skip_special_tokens=True)

    def judge_many(self, questions: list[str], completions: list[str], answers: list[str]) -> list[Verdict]:
        verdicts = [verdict_of(text) for text in self.outputs(questions, completions, answers)]
        self.count("invalid", sum(v.reason == "invalid" for v in verdicts))
        return verdicts


class VerdictMatch(Verifier):
    """Held-out accuracy of a GenRM under SFT: does the generated verdict equal the record's label?

    ``answer`` is the label, ``"true"`` or ``"false"``; output without a readable verdict is
    wrong (``invalid``). Not a judge of policy responses: it grades the judge itself.
    """

    def judge(self, question: str, completion: str, answer: str) -> Verdict:
        verdict = verdict_of(completion)
        if verdict.reason == "invalid":
            return verdict
        return Verdict(True, "agree") if verdict.correct == (as_bool(answer) is True) else Verdict(False, "disagree")
