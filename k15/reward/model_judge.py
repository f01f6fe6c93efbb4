"""ModelJudge: a Verifier backed by a frozen network (the scalar and generative reward models).

Where it runs. A judge is an ``nn.Module`` as well as a ``Verifier``; the RewardModule holds it as
``self.verifier``, and the policy holds the RewardModule, so Lightning moves the judge to the
policy's device with the policy (``trainer.fit`` → ``module.to(device)``) and every judgement runs
where its weights are. The weights are frozen (``requires_grad`` off: no optimizer or DDP sees
them), the judge stays in eval mode whatever its owner is switched to, and judgements run without
autograd. They are saved in the policy's checkpoints and, under FSDP2, replicated rather than
sharded: fine for a judge much smaller than the policy.
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from k15.reward.answer import Verdict, Verifier
from k15.reward.judge_prompt import JUDGE_TEMPLATE, judging_prompt


def unknown_characters(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """Characters of ``text`` the tokenizer can only encode as its unknown token (a character
    tokenizer whose alphabet lacks them); empty for byte-level tokenizers."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return ""
    return "".join(sorted(c for c in set(text) if unk in tokenizer(c, add_special_tokens=False)["input_ids"]))


def check_template(tokenizer: PreTrainedTokenizerBase, template: str, owner: str) -> None:
    """A clear error now for a judging template the tokenizer cannot spell, rather than <unk>s later."""
    unknown = unknown_characters(tokenizer, judging_prompt("", "", "", template))
    if unknown:
        raise ValueError(
            f"{owner}.prompt_template: the model's tokenizer cannot encode {unknown!r} (a character alphabet without "
            "them?)"
        )


class ModelJudge(Verifier, nn.Module):
    """Base class: renders judging prompts, keeps the network frozen; subclasses implement ``judge_many``.

    Args:
        model: the network (moved with its owner; frozen here).
        tokenizer: its tokenizer.
        prompt_template: the judging prompt, with fields {question}, {reference}, {response}.
    """

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_template: str = JUDGE_TEMPLATE
    ):
        nn.Module.__init__(self)
        check_template(tokenizer, prompt_template, type(self).__name__)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template

    def train(self, mode: bool = True) -> ModelJudge:
        """A frozen judge stays in eval mode (no dropout), whatever mode its owner switches to."""
        return super().train(False)

    def prompts(self, questions: list[str], completions: list[str], answers: list[str]) -> list[str]:
        return [
            judging_prompt(q, a, c, self.prompt_template)
            for q, c, a in zip(questions, completions, answers, strict=True)
        ]

    def judge(self, question: str, completion: str, answer: str) -> Verdict:
        return self.judge_many([question], [completion], [answer])[0]

    def judge_many(self, questions: list[str], completions: list[str], answers: list[str]) -> list[Verdict]:
        raise NotImplementedError
