"""LanguageModule: what SFT and RL modules share — a causal LM, its tokenizer, held-out accuracy."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from transformers import PreTrainedModel

from k15.data.prompts import PromptBatch
from k15.models import ModelSource
from k15.reward import RewardModule
from k15.rollout.engine import Request, Sampling
from k15.rollout.hf import hf_sample


def shard_decoder(model: PreTrainedModel, mesh) -> None:
    """FSDP2: shard each decoder layer, then the rest (embeddings, norm, tied head) at the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-5)


class LanguageModule(LightningModule):
    """A causal LM, or a vision-language model that reads images too, built from a ``ModelSource``
    in ``configure_model`` (so sharding strategies can build it in place), validated by greedy
    held-out accuracy.

    Args:
        model: where the weights, tokenizer and (for images) processor come from.
        reward: scores completions; its verifier decides held-out correctness.
        optimizer: optimizer factory, e.g. ``{class_path: torch.optim.AdamW, init_args: {lr: 3e-5}}``.
        lr_scheduler: optional learning-rate schedule, stepped after every optimizer step.
        heldout_max_new_tokens: generation length for held-out evaluation.
    """

    def __init__(
        self,
        model: ModelSource,
        reward: RewardModule | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        heldout_max_new_tokens: int = 64,
    ):
        super().__init__()
        self.source = model
        self.processor = model.processor()  # None for a text-only model
        self.tokenizer = self.processor.tokenizer if self.processor is not None else model.tokenizer()
        self.reward = reward or RewardModule()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.heldout_max_new_tokens = heldout_max_new_tokens
        self.model: PreTrainedModel | None = None

    @property
    def unsampled_token_ids(self) -> tuple[int, ...]:
        """Tokens the policy must never generate: a vision model's image placeholder stands only
        for an image (one sampled into a response would leave the update an image short)."""
        return () if self.processor is None else (self.tokenizer.convert_tokens_to_ids(self.processor.image_token),)

    def configure_model(self) -> None:
        if self.model is None:
            self.model = self.source.model().train()  # from_pretrained returns eval mode
            if self._device_mesh is not None:  # ModelParallelStrategy: FSDP2 over the data-parallel mesh
                shard_decoder(self.model, self._device_mesh["data_parallel"])

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.model.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def validation_step(self, batch: PromptBatch, batch_idx: int) -> None:
        requests = [
            Request(ids, 1, self.heldout_max_new_tokens, images, inputs)
            for ids, images, inputs in zip(batch.prompt_ids, batch.images, batch.model_inputs, strict=True)
        ]
        completions = hf_sample(self.model, requests, Sampling(temperature=0.0, banned_token_ids=self.unsampled_token_ids))
        texts = self.tokenizer.batch_decode([c[0].token_ids for c in completions], skip_special_tokens=True)
        correct, _ = self.reward.judge(batch.prompts, texts, batch.answers)
        self.log("heldout/accuracy", correct.mean(), batch_size=len(batch), prog_bar=True, sync_dist=True)
