"""PolicyModule: one RL iteration's policy update (k1.5 §2.3), with manual optimization.

The rollout callback has already sampled k trajectories per prompt and scored them; this module

    1. scores every trajectory with π_ref (π_θi: the weights as they are now, before any update;
       when the first optimizer step covers every trajectory, its own forwards give these),
    2. resets the optimizer state (each iteration is a new mirror-descent problem),
    3. takes ``passes_per_iteration`` passes of mini-batch steps on the policy loss → θ_{i+1}
       (``k15/update.py``), dropping any step whose loss or gradient is not finite.
"""

from __future__ import annotations

import copy

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from k15.data.prompts import PromptBatch, all_ranks
from k15.errors import require_at_least_one
from k15.evaluation import Evaluation
from k15.language_module import LanguageModule
from k15.lora import LoRA
from k15.losses import KimiLoss, KLToInitial, PolicyLoss
from k15.metrics import log_iteration, over_ranks
from k15.models import ModelSource
from k15.off_policy import OffPolicyCorrection
from k15.optim import default_optimizer
from k15.reference import ReferenceModule
from k15.reward import RewardModule
from k15.rollout import RolloutCallback
from k15.rollout.batch import Rollout, concat_rollouts
from k15.rollout.callback import RolloutPolicy
from k15.rollout.consistency import logprob_mismatch
from k15.rollout.engine import Engine
from k15.strategy import FSDP2Strategy
from k15.update import update_policy


class PolicyModule(LanguageModule):
    """The trained policy π_θ, the rollouts it learns from, and its loss.

    Args:
        model, reward, optimizer, lr_scheduler, heldout_max_new_tokens, max_skipped_steps_in_a_row,
            logprob_chunk_tokens, activation_checkpointing, lora, evaluation: see ``LanguageModule``
            (an evaluation samples on the rollout engine).
        rollout: samples and scores each iteration's trajectories; the module adds it to the
            trainer's callbacks itself, so an RL run cannot lack it.
        loss: the policy loss (``KimiLoss``, ``GRPOLoss``, …; None: ``KimiLoss(tau=0.5)``).
        reference: the π_ref scorer (None: a ``ReferenceModule`` of its own).
        reset_optimizer_each_iteration: clear optimizer state at the start of every iteration
            (the paper's choice).
        passes_per_iteration: passes over the iteration's trajectories.
        trajectories_per_step: trajectories per optimizer step (None: all N = P·k, one step a pass).
        gradient_clip_norm: clip the gradient's global norm (None: off).
        max_tokens_per_micro_batch: forward/backward in micro-batches of at most this many real
            tokens each, packed into one row without padding (``k15.packing``), accumulating one
            step's gradient (None: a step's rows in one pass). The budget is per process (per GPU);
            sharded ranks agree on the number of micro-batches (``most``). It also bounds the
            reference pass unless the reference sets its own.
        kl_to_initial: add β·KL(π_θ ‖ π_init) to the loss, π_init a frozen copy of the starting policy
            (``k15.losses.KLToInitial``; logged as ``train/kl_to_initial``; None: off, as in k1.5).
        off_policy: weight each token by π_θi/μ, μ the engine's probability of the token it sampled,
            which differs from π_θi for a partial rollout's older segments and for an engine that
            computes π differently (``k15.off_policy.TIS`` or ``IcePop``; logged as ``train/is_weight_mean``
            and ``train/is_clipped_share``; None: no correction). Needs the engine's log-probs (both
            engines report them when sampling at τ > 0) and the ``iteration`` reference.
        seed: the order of iteration i's trajectories in the update is drawn from a generator
            seeded ``seed + i``, not from the global RNG (which an in-process engine may reseed),
            so a resumed run updates exactly as the uninterrupted one.
    """

    def __init__(
        self,
        model: ModelSource,
        rollout: RolloutCallback,
        reward: RewardModule | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        heldout_max_new_tokens: int = 64,
        loss: PolicyLoss | None = None,
        reference: ReferenceModule | None = None,
        reset_optimizer_each_iteration: bool = True,
        passes_per_iteration: int = 2,
        trajectories_per_step: int | None = None,
        gradient_clip_norm: float | None = 1.0,
        max_tokens_per_micro_batch: int | None = None,
        max_skipped_steps_in_a_row: int = 3,
        seed: int = 0,
        logprob_chunk_tokens: int = 1024,
        activation_checkpointing: bool = False,
        lora: LoRA | None = None,
        kl_to_initial: KLToInitial | None = None,
        off_policy: OffPolicyCorrection | None = None,
        evaluation: Evaluation | None = None,
    ):
        super().__init__(
            model,
            reward,
            optimizer,
            lr_scheduler,
            heldout_max_new_tokens,
            max_skipped_steps_in_a_row,
            logprob_chunk_tokens,
            activation_checkpointing,
            lora,
            evaluation=evaluation,
        )
        self.rollout = rollout
        require_at_least_one(
            "model",
            passes_per_iteration=passes_per_iteration,
            trajectories_per_step=trajectories_per_step,
            max_tokens_per_micro_batch=max_tokens_per_micro_batch,
        )
        if gradient_clip_norm is not None and not gradient_clip_norm > 0:
            raise ValueError(f"model.gradient_clip_norm must be > 0 or null, got {gradient_clip_norm}")
        loss = loss or KimiLoss(tau=0.5)
        if loss.group_baseline and rollout.samples_per_prompt < 2:
            raise ValueError(
                f"model.rollout.samples_per_prompt is {rollout.samples_per_prompt}, but {type(loss).__name__}'s "
                "baseline "
                "compares a prompt's k samples: with k = 1 every advantage is 0 and nothing is learned; use k ≥ 2"
            )
        if self.max_rollout_prompt_tokens < 1:
            raise ValueError(
                f"model.rollout.max_new_tokens ({rollout.max_new_tokens}) leaves no room for a prompt in the context "
                f"({self.context_tokens} tokens for the model, {rollout.engine.max_model_len} for the engine)"
            )
        self.automatic_optimization = False
        self.loss = loss
        self.reference = reference or ReferenceModule()
        if off_policy is not None and self.reference.mode != "iteration":
            raise ValueError(
                "model.off_policy weights tokens by π_θi/μ, but model.reference.init_args.mode is "
                f"{self.reference.mode!r}, which does not score π_θi: use mode: iteration"
            )
        self.off_policy = off_policy
        self.reset_optimizer_each_iteration = reset_optimizer_each_iteration
        self.passes_per_iteration = passes_per_iteration
        self.trajectories_per_step = trajectories_per_step
        self.gradient_clip_norm = gradient_clip_norm
        self.max_tokens_per_micro_batch = max_tokens_per_micro_batch
        self.seed = seed
        self.kl_to_initial = kl_to_initial
        self.initial_reference = ReferenceModule(mode="initial") if kl_to_initial else None

    @property
    def max_rollout_prompt_tokens(self) -> int:
        """Training prompts longer than this leave no room for a whole response (the model's or
        the engine's context, less ``rollout.max_new_tokens``): the data skips them at load."""
        context = min(self.context_tokens, self.rollout.engine.max_model_len or self.context_tokens)
        return context - self.rollout.max_new_tokens

    def configure_model(self) -> None:
        super().configure_model()
        self.reference.attach(self.model)
        if self.initial_reference is not None:
            self.initial_reference.attach(self.model)

    def configure_callbacks(self):
        return super().configure_callbacks() + [self.rollout]

    @property
    def sampling_temperature(self) -> float:
        """τ of the distribution the rollouts are drawn from: the update scores log softmax(logits / τ),
        the policy that acted, so the gradient is on-policy at any temperature (greedy counts as τ = 1)."""
        return self.rollout.temperature or 1.0

    @property
    def iteration(self) -> int:
        """Index i of the current RL iteration (restored on resume)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.total.completed

    def rollout_policy(self) -> RolloutPolicy:
        """What the rollout callback needs from this module, for iteration i."""
        return RolloutPolicy(
            self.model, self.tokenizer, self.reward, self.iteration, self.unsampled_token_ids, self.device
        )

    def evaluation_engine(self) -> Engine:
        """A held-out evaluation samples on the rollout engine, synced to π_θ first."""
        return self.rollout.engine

    def most(self, count: int) -> int:
        """The largest ``count`` over all ranks (sharded ranks run equally many passes)."""
        if self.trainer.world_size == 1:
            return count
        return int(self.trainer.strategy.reduce(torch.tensor(count, device=self.device), reduce_op="max"))

    def sequence_group_rollout(self, rollout: Rollout | None) -> Rollout | None:
        """With sequence parallelism the ranks of a group split each packed row between them, so
        they must train on the same trajectories: the union of theirs (each rank drew its own
        prompts and rolled them out, so no rank's work is lost)."""
        strategy = self.trainer.strategy
        if not isinstance(strategy, FSDP2Strategy) or strategy.sequence_parallel_size == 1:
            return rollout
        group = strategy.device_mesh["sequence_parallel"].get_group()
        rollouts = [None] * strategy.sequence_parallel_size
        mine = None if rollout is None else copy.copy(rollout).to("cpu")  # a copy: the batch keeps its own on device
        torch.distributed.all_gather_object(rollouts, mine, group=group)
        shared = concat_rollouts(rollouts)
        return None if shared is None else shared.to(self.device)

    def training_step(self, batch: PromptBatch, batch_idx: int) -> None:
        rollout = self.sequence_group_rollout(batch.rollout)
        # partial rollouts: no group of this rank finished this iteration. Alone, nothing to do;
        # sharded, its peers' passes are collective, so it takes part in them (adding nothing).
        if rollout is None and self.trainer.world_size == 1:
            return
        n = 0 if rollout is None else len(rollout.input_ids)
        # With π_ref = π_θi and a first optimizer step over every row, that step's forwards run at
        # θ = θ_i: their detached log-probs are π_θi's, so no separate reference pass is needed.
        # Ranks decide together: the reference pass is collective when sharded.
        from_first_step = self.reference.mode == "iteration" and self.agree((self.trajectories_per_step or n) >= n)
        ref_logp = None if from_first_step else self.scored_by(self.reference, rollout)
        init_logp = None if self.kl_to_initial is None else self.scored_by(self.initial_reference, rollout)
        stats = update_policy(
            self.model,
            rollout,
            self.loss,
            self.optimizers(),
            ref_logp,
            generator=torch.Generator().manual_seed(self.seed + self.iteration),
            guard=self.guard,
            passes=self.passes_per_iteration,
            trajectories_per_step=self.trajectories_per_step,
            max_tokens_per_micro_batch=self.max_tokens_per_micro_batch,
            gradient_clip_norm=self.gradient_clip_norm,
            reset_optimizer=self.reset_optimizer_each_iteration,
            scheduler=self.lr_schedulers(),
            backward=self.manual_backward,
            agree=self.agree,
            most=self.most,
            temperature=self.sampling_temperature,
            chunk_tokens=self.logprob_chunk_tokens,
            device=self.device,
            kl=self.kl_to_initial,
            init_logp=init_logp,
            correction=self.off_policy,
        )
        metrics = {} if rollout is None else self.update_metrics(rollout, stats)
        # every rank's, so an iteration in which rank 0 finished no group is logged all the same
        log_iteration(self.trainer, over_ranks(all_ranks(metrics)), self.iteration)
        if rollout is not None:
            self.log("loss", metrics["train/loss"], prog_bar=True, logger=False, batch_size=len(batch))

    def scored_by(self, reference: ReferenceModule, rollout: Rollout | None):
        """[N, T] log-probs of the rollout's tokens under ``reference`` (collective when sharded:
        a rank without trajectories takes part with none)."""
        nothing = torch.zeros((0, 1), dtype=torch.long, device=self.device)
        return reference(
            self.model,
            nothing if rollout is None else rollout.input_ids,
            nothing if rollout is None else rollout.attention_mask,
            (lambda rows: {}) if rollout is None else rollout.inputs_for,
            self.sampling_temperature,
            self.logprob_chunk_tokens,
            self.max_tokens_per_micro_batch,
            self.most,
        )

    def update_metrics(self, rollout: Rollout, stats) -> dict[str, float]:
        metrics = {
            "train/loss": torch.stack(stats.step_losses).mean(),
            "train/log_ratio_mean": stats.log_ratios.mean(),
            "train/log_ratio_abs_max": stats.log_ratios.abs().max(),
            "train/advantage_abs_mean": stats.advantages.abs().mean(),
            "train/grad_norm": max(stats.grad_norms),
            "train/entropy": stats.entropy,
            "train/skipped_steps": float(self.guard.skipped),
        }
        if stats.kl_to_initial is not None:
            metrics["train/kl_to_initial"] = stats.kl_to_initial
        if stats.is_weight_mean is not None:
            metrics |= {"train/is_weight_mean": stats.is_weight_mean, "train/is_clipped_share": stats.is_clipped_share}
        sampled_now = (rollout.versions == self.iteration).float()  # older segments came from older weights
        if rollout.engine_logprobs is not None and self.reference.mode == "iteration" and sampled_now.any():
            # engine vs trainer log-probs on the tokens the engine sampled with π_θi this iteration
            abs_diff, kl = logprob_mismatch(rollout.engine_logprobs, stats.ref_logp, sampled_now)
            metrics |= {"rollout/engine_logp_abs_diff": abs_diff, "rollout/engine_kl": kl}
        return {key: float(value) for key, value in metrics.items()}
