"""LanguageModule: what SFT and RL modules share — a causal LM, its tokenizer, held-out accuracy."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from transformers import PreTrainedModel

from k15.data.prompts import PromptBatch
from k15.models import ModelSource
from k15.reward import RewardModule
from k15.rollout.engine import Sampling
from k15.rollout.hf import hf_generate


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-5)


class LanguageModule(LightningModule):
    """A causal LM built from a ``ModelSource`` in ``configure_model`` (so sharding strategies can
    build it in place), validated by greedy held-out accuracy.

    Args:
        model: where the weights and tokenizer come from.
        reward: scores completions; its verifier decides held-out correctness.
        optimizer: optimizer factory, e.g. ``{class_path: torch.optim.AdamW, init_args: {lr: 3e-5}}``.
        heldout_max_new_tokens: generation length for held-out evaluation.
    """

    def __init__(
        self,
        model: ModelSource,
        reward: RewardModule | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        heldout_max_new_tokens: int = 64,
    ):
        super().__init__()
        self.source = model
        self.tokenizer = model.tokenizer()
        self.reward = reward or RewardModule()
        self.optimizer_factory = optimizer
        self.heldout_max_new_tokens = heldout_max_new_tokens
        self.model: PreTrainedModel | None = None

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self.source.model().train()  # from_pretrained returns eval mode

    def configure_optimizers(self):
        return self.optimizer_factory(self.model.parameters())

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        sampling = Sampling(samples_per_prompt=1, max_new_tokens=self.heldout_max_new_tokens, temperature=0.0)
        completions = hf_generate(self.model, batch.prompt_ids, sampling)
        texts = self.tokenizer.batch_decode([c[0].token_ids for c in completions], skip_special_tokens=True)
        correct = self.reward.correctness(texts, batch.answers)
        self.log("heldout/accuracy", correct.mean(), batch_size=len(batch), prog_bar=True)
