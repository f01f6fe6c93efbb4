"""Scalar-head reward model (the classic RM, k1.5 §2.3.5): a sequence classifier scores a judging
prompt (question, reference answer, response) for correctness.

    s = w · h_last            h_last: the hidden state of the prompt's last token  (Qwen2ForSequenceClassification)
    p = σ(s)                  the judged probability that the response is correct
    L = −[y log p + (1 − y) log(1 − p)]      binary cross-entropy against the label y ∈ {0, 1}

``ScalarRMModule`` trains it — a causal LM's backbone plus a fresh linear head — on labelled
judging records (``k15.data.judging``), validated by held-out accuracy and AUC;
``k15.export.ExportPretrained`` writes it as a ``save_pretrained`` folder that
``AutoModelForSequenceClassification`` loads. ``ScalarRM`` loads that folder as the RL
correctness judge: correct iff p ≥ threshold.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from k15.data.judging import JudgingBatch
from k15.models import ModelSource
from k15.optim import check_learning_rates, configured_optimizers, default_optimizer
from k15.padding import padded_ids
from k15.reward.answer import Verdict
from k15.reward.judge_prompt import JUDGE_TEMPLATE, judging_prompt
from k15.reward.model_judge import ModelJudge, check_template


def sequence_classifier(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    """A one-logit sequence classifier with ``lm``'s backbone weights (copied) and a new score
    head, initialised from ``seed`` (the same seed, the same head).

    Starting from a causal LM is the usual reward-model recipe: the backbone already reads the
    task's language; only the head starts from scratch.
    """
    config = copy.deepcopy(lm.config)
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id  # pooling finds each row's last non-pad token
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        classifier = AutoModelForSequenceClassification.from_config(config)
    classifier.base_model.load_state_dict(lm.base_model.state_dict())
    return classifier


def right_padded(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_tokens: int) -> tuple[Tensor, Tensor]:
    """Texts → input_ids, attention_mask [N, T], padded on the right.

    Right padding keeps every row's positions 0..len−1 whatever the batch, so a text scores the
    same alone or in any batch (the classifier pools each row's last non-pad token).
    """
    rows = tokenizer(texts)["input_ids"]
    longest = max(len(ids) for ids in rows)
    if longest > max_tokens:
        raise ValueError(
            f"a judging prompt has {longest} tokens, more than the reward model's max_position_embeddings "
            f"({max_tokens})"
        )
    return padded_ids(rows, tokenizer.pad_token_id)


def reward_logits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> Tensor:
    """s for each text: [N], on the model's device."""
    device = next(model.parameters()).device
    input_ids, attention_mask = right_padded(tokenizer, texts, model.config.max_position_embeddings)
    return model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.squeeze(-1)


class ScalarRMModule(LightningModule):
    """Trains a scalar reward model on labelled judging records with binary cross-entropy.

    Logs ``train/loss``, ``train/accuracy``; ``heldout/accuracy`` (p ≥ 0.5 vs the label),
    ``heldout/auc``, ``heldout/loss`` and ``heldout/positive_rate`` (so the majority-class baseline
    is max(rate, 1 − rate)).

    Args:
        model: the backbone's weights and tokenizer (``k15.models.TinyQwen2``, ``Pretrained`` …).
        optimizer: optimizer factory.
        lr_scheduler: optional learning-rate schedule, stepped after every optimizer step.
        prompt_template: the judging prompt, with fields {question}, {reference}, {response};
            ``ScalarRM`` must judge with the same one.
    """

    def __init__(
        self,
        model: ModelSource,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        prompt_template: str = JUDGE_TEMPLATE,
    ):
        super().__init__()
        check_learning_rates(optimizer)
        self.source = model
        self.tokenizer = model.tokenizer()
        check_template(self.tokenizer, prompt_template, "ScalarRMModule")
        self.processor = None  # text only (ExportPretrained saves the tokenizer)
        self.prompt_format = None  # judging prompts are plain text (k15.reward.judge_prompt)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.prompt_template = prompt_template
        self.model: PreTrainedModel | None = None
        self.heldout_accuracy, self.heldout_auc = BinaryAccuracy(), BinaryAUROC()
        self.heldout_loss, self.heldout_positive_rate = MeanMetric(), MeanMetric()

    def configure_model(self) -> None:
        if self.model is None:
            self.model = sequence_classifier(self.source.model(), self.tokenizer).train()

    def configure_optimizers(self):
        return configured_optimizers(self.model.parameters(), self.optimizer_factory, self.lr_scheduler_factory)

    def logits(self, batch: JudgingBatch) -> Tensor:
        texts = [
            judging_prompt(*row, self.prompt_template)
            for row in zip(batch.questions, batch.references, batch.responses, strict=True)
        ]
        return reward_logits(self.model, self.tokenizer, texts)

    def training_step(self, batch: JudgingBatch, batch_idx: int) -> Tensor:
        logits = self.logits(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.correct)
        accuracy = ((logits >= 0) == batch.correct.bool()).float().mean()
        self.log_dict({"train/loss": loss, "train/accuracy": accuracy}, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: JudgingBatch, batch_idx: int) -> None:
        logits = self.logits(batch)
        labels = batch.correct.long()
        self.heldout_accuracy.update(logits.sigmoid(), labels)
        self.heldout_auc.update(logits.sigmoid(), labels)
        self.heldout_loss.update(F.binary_cross_entropy_with_logits(logits, batch.correct, reduction="none"))
        self.heldout_positive_rate.update(batch.correct)
        metrics = {
            "heldout/accuracy": self.heldout_accuracy,
            "heldout/auc": self.heldout_auc,
            "heldout/loss": self.heldout_loss,
            "heldout/positive_rate": self.heldout_positive_rate,
        }
        self.log_dict(metrics, batch_size=len(batch), prog_bar=False)


class ScalarRM(ModelJudge):
    """A trained scalar reward model as the correctness judge: correct iff σ(s) ≥ ``threshold``.

    One right-padded forward per ``max_judgements`` responses. In the RL job it runs on the
    policy's device, frozen (see ``k15.reward.model_judge``).

    Args:
        path: the ``save_pretrained`` folder ``ScalarRMModule`` exported (model + tokenizer).
        prompt_template: the judging prompt it was trained with.
        threshold: the probability from which a response counts as correct.
        max_judgements: most responses judged in one forward (one judging prompt each).
    """

    def __init__(
        self, path: str, prompt_template: str = JUDGE_TEMPLATE, threshold: float = 0.5, max_judgements: int = 256
    ):
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype="float32")
        if model.config.num_labels != 1:
            raise ValueError(
                f"ScalarRM.path: {path!r} holds a classifier with {model.config.num_labels} labels, not a one-logit "
                "reward model"
            )
        super().__init__(model, AutoTokenizer.from_pretrained(path), prompt_template)
        self.threshold = threshold
        self.max_judgements = max_judgements

    @torch.no_grad()
    def scores(self, questions: list[str], completions: list[str], answers: list[str]) -> Tensor:
        """σ(s) for each response: [N], on the CPU."""
        texts = self.prompts(questions, completions, answers)
        if not texts:
            return torch.zeros(0)
        chunks = [texts[i : i + self.max_judgements] for i in range(0, len(texts), self.max_judgements)]
        return torch.cat([reward_logits(self.model, self.tokenizer, chunk).sigmoid().cpu() for chunk in chunks])

    def judge_many(self, questions: list[str], completions: list[str], answers: list[str]) -> list[Verdict]:
        return [
            Verdict(True, "accept") if p >= self.threshold else Verdict(False, "reject")
            for p in self.scores(questions, completions, answers).tolist()
        ]
