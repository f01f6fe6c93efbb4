"""PolicyModule: one RL iteration's policy update (k1.5 §2.3), with manual optimization.

The rollout callback has already sampled k trajectories per prompt and scored them; this module

    1. scores every trajectory with π_ref (π_θi: the weights as they are now, before any update;
       when the first optimizer step covers every trajectory, its own forwards give these),
    2. resets the optimizer state (each iteration is a new mirror-descent problem),
    3. takes ``passes_per_iteration`` passes of mini-batch steps on the policy loss → θ_{i+1}.
"""

from __future__ import annotations

import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from k15.data.prompts import PromptBatch
from k15.logprobs import token_logprobs
from k15.losses import KimiLoss, PolicyLoss, sequence_log_ratio
from k15.microbatch import micro_batches
from k15.models import ModelSource
from k15.module import LanguageModule, default_optimizer
from k15.reference import ReferenceModule
from k15.reward import RewardModule
from k15.rollout import RolloutCallback
from k15.rollout.consistency import logprob_mismatch


class PolicyModule(LanguageModule):
    """The trained policy π_θ, the rollouts it learns from, and its loss.

    Args:
        model, reward, optimizer, lr_scheduler, heldout_max_new_tokens: see ``LanguageModule``.
        rollout: samples and scores each iteration's trajectories; the module adds it to the
            trainer's callbacks itself, so an RL run cannot lack it.
        loss: the policy loss (``KimiLoss``, ``GRPOLoss``, …).
        reference: the π_ref scorer.
        reset_optimizer_each_iteration: clear optimizer state at the start of every iteration
            (the paper's choice).
        passes_per_iteration: passes over the iteration's trajectories.
        trajectories_per_step: trajectories per optimizer step (None: all N = P·k, one step a pass).
        gradient_clip_norm: clip the gradient's global norm (None: off).
        micro_batch_tokens: forward/backward in length-sorted micro-batches of at most this many
            padded tokens, accumulating one step's gradient (None: a step's rows in one pass).
            Long-tailed batches then stop paying for padding; single process only for now.
    """

    def __init__(
        self,
        model: ModelSource,
        rollout: RolloutCallback,
        reward: RewardModule | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        heldout_max_new_tokens: int = 64,
        loss: PolicyLoss = lazy_instance(KimiLoss, tau=0.5),
        reference: ReferenceModule = lazy_instance(ReferenceModule),
        reset_optimizer_each_iteration: bool = True,
        passes_per_iteration: int = 2,
        trajectories_per_step: int | None = None,
        gradient_clip_norm: float | None = 1.0,
        micro_batch_tokens: int | None = None,
    ):
        super().__init__(model, reward, optimizer, lr_scheduler, heldout_max_new_tokens)
        self.automatic_optimization = False
        self.rollout = rollout
        self.loss = loss
        self.reference = reference
        self.reset_optimizer_each_iteration = reset_optimizer_each_iteration
        self.passes_per_iteration = passes_per_iteration
        self.trajectories_per_step = trajectories_per_step
        self.gradient_clip_norm = gradient_clip_norm
        self.micro_batch_tokens = micro_batch_tokens

    def configure_model(self) -> None:
        super().configure_model()
        self.reference.attach(self.model)

    def setup(self, stage: str) -> None:
        if self.micro_batch_tokens is not None and self.trainer.world_size > 1:
            # ranks would run different numbers of sharded forwards per step and deadlock
            raise ValueError("model.micro_batch_tokens needs a single process for now; set it to null (conf/strategy/fsdp2.yaml does)")

    def configure_callbacks(self):
        return [self.rollout]

    def _log_engine_mismatch(self, rollout, ref_logp: torch.Tensor) -> None:
        """Engine vs trainer log-probs on the tokens the engine sampled with π_θi this iteration."""
        sampled_now = (rollout.versions == self.iteration).float()  # older segments came from older weights
        if rollout.engine_logprobs is not None and self.reference.mode == "iteration" and sampled_now.any():
            abs_diff, kl = logprob_mismatch(rollout.engine_logprobs, ref_logp, sampled_now)
            self.log_dict({"rollout/engine_logp_abs_diff": abs_diff, "rollout/engine_kl": kl}, batch_size=1)

    @property
    def iteration(self) -> int:
        """Index i of the current RL iteration (restored on resume)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.total.completed

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        rollout = batch.rollout
        if rollout is None:  # partial rollouts: no group finished this iteration, nothing to learn from
            return
        n = len(rollout.input_ids)
        step = self.trajectories_per_step or n
        # With π_ref = π_θi and a first optimizer step over every row, that step's forwards run at
        # θ = θ_i: their detached log-probs are π_θi's, so no separate reference pass is needed.
        reference_from_first_step = self.reference.mode == "iteration" and step >= n
        if reference_from_first_step:
            ref_logp = torch.zeros(rollout.input_ids.shape, device=rollout.input_ids.device)
        else:
            ref_logp = self.reference(self.model, rollout.input_ids, rollout.attention_mask, rollout.inputs_for)
            self._log_engine_mismatch(rollout, ref_logp)
        advantages = self.loss.advantages(rollout.rewards.total).to(ref_logp.device)
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        if self.reset_optimizer_each_iteration:
            optimizer.optimizer.state.clear()

        lengths = rollout.attention_mask.sum(dim=1)
        losses, log_ratios = [], []
        for _ in range(self.passes_per_iteration):
            for rows in torch.randperm(n, device=ref_logp.device).split(step):
                optimizer.zero_grad()
                step_loss = 0.0
                # one optimizer step over ``rows``, as gradient accumulation over length buckets
                for mb in micro_batches(lengths, rows, self.micro_batch_tokens):
                    width = int(lengths[mb].max())
                    ids, mask, in_loss = rollout.input_ids[mb, :width], rollout.attention_mask[mb, :width], rollout.loss_mask[mb, :width]
                    logp = token_logprobs(self.model, ids, mask, **rollout.inputs_for(mb))
                    if reference_from_first_step:
                        ref_logp[mb, :width] = logp.detach()
                    share = self.loss.share(in_loss, rollout.loss_mask[rows])
                    loss = self.loss(logp, ref_logp[mb, :width], in_loss, advantages[mb]) * share
                    self.manual_backward(loss)
                    step_loss += loss.detach()
                    # ℓ_j as this step's loss saw it (0 on the first pass, where θ = θ_i)
                    log_ratios.append(sequence_log_ratio(logp.detach(), ref_logp[mb, :width], in_loss))
                if reference_from_first_step:
                    reference_from_first_step = False
                    self._log_engine_mismatch(rollout, ref_logp)
                if self.gradient_clip_norm is not None:
                    self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_norm, gradient_clip_algorithm="norm")
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                losses.append(step_loss)

        log_ratio = torch.cat(log_ratios)
        self.log_dict(
            {
                "train/loss": torch.stack(losses).mean(),
                "train/log_ratio_mean": log_ratio.mean(),
                "train/log_ratio_abs_max": log_ratio.abs().max(),
                "train/advantage_abs_mean": advantages.abs().mean(),
            },
            batch_size=len(batch),
        )
