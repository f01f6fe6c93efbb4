"""RolloutCallback: the rollout's Lightning face. Before each RL iteration's ``training_step``:

    policy = pl_module.rollout_policy() → engine.sync(π_θi) → RolloutSampler.rollout(P new prompts)
    → success rates to the data module (if it takes them) → batch.rollout → engine.sleep
    → metrics over every rank's rollouts

The sampling, segments, scoring and packing are ``k15.rollout.sampler.RolloutSampler``'s, which
runs without Lightning. The callback sees the module only through ``RolloutPolicy`` and the data
module only through ``SuccessFeedback``. In a multi-process run every rank rolls out its own
prompts on its own engine and keeps its own replay buffer; the checkpoint holds every rank's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from k15.data.prompts import PromptBatch, all_ranks
from k15.errors import K15Error, require_at_least_one
from k15.metrics import log_iteration, over_ranks, shares
from k15.reward import RewardModule
from k15.rollout.batch import Rollout
from k15.rollout.engine import Engine
from k15.rollout.sampler import RolloutSampler
from k15.rollout.trajectory import FINISH_REASONS

# summed over ranks (the rest are averaged, ``*_max`` maximised): totals of the whole iteration
SUMMED = ("rollout/tokens_per_s", "rollout/buffer_groups", "rollout/buffer_trajectories", "rollout/groups_finished")


@dataclass
class RolloutPolicy:
    """What a rollout needs from the policy it samples for (``PolicyModule.rollout_policy``)."""

    model: nn.Module  # π_θi, synced into the engine
    tokenizer: PreTrainedTokenizerBase  # decodes completions for the reward
    reward: RewardModule
    iteration: int  # i, which seeds the samples and versions the segments
    banned_token_ids: tuple[int, ...]  # never sampled (a vision model's image placeholder)
    device: torch.device  # where the update wants the rollout


@runtime_checkable
class SuccessFeedback(Protocol):
    """A data module that learns from outcomes: ``correct`` [P, k] for this rank's prompts ``keys``
    (``k15.data.curriculum.CurriculumDataModule``'s success table)."""

    def record(self, keys: list[str], correct: Tensor) -> None: ...


class RolloutCallback(RolloutSampler, Callback):
    """Samples k trajectories per prompt with ``engine`` and scores them with the policy's reward.

    Args:
        engine, samples_per_prompt, max_new_tokens, length_stages, segment_tokens, segments_in_loss, temperature,
            top_p, stop_token_ids, seed, repeat_detector: see ``RolloutSampler``.
        text_samples_every_n_iterations: log a few completions as TensorBoard text this often.
    """

    def __init__(self, engine: Engine, text_samples_every_n_iterations: int = 10, **sampler_args):
        super().__init__(engine, **sampler_args)
        require_at_least_one("rollout", text_samples_every_n_iterations=text_samples_every_n_iterations)
        self.text_samples_every_n_iterations = text_samples_every_n_iterations
        self.rank, self.world_size = 0, 1
        self.reasons_seen: dict[str, set[str]] = {}  # reward term → every reason it gave (logged as 0 when absent)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.rank, self.world_size = trainer.global_rank, trainer.world_size  # setup runs before a resume's restore

    def state_dict(self) -> dict:
        """Every rank's replay buffer (each holds its own unfinished trajectories; every rank calls this)."""
        return {
            "buffers": all_ranks(self.buffer.state_dict()),
            "reasons_seen": {term: sorted(r) for term, r in self.reasons_seen.items()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        buffers = state_dict.get("buffers") or [state_dict["buffer"]]  # "buffer": one process's, before 2026-12
        if len(buffers) != self.world_size:
            raise K15Error(
                f"the checkpoint's replay buffers are those of {len(buffers)} process(es), this run has "
                f"{self.world_size}: resume with as many processes as the run had"
            )
        self.buffer.load_state_dict(buffers[self.rank])
        self.reasons_seen = {term: set(r) for term, r in state_dict.get("reasons_seen", {}).items()}

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: PromptBatch, batch_idx: int
    ) -> None:
        policy: RolloutPolicy = pl_module.rollout_policy()
        self.banned_token_ids = policy.banned_token_ids
        start = time.perf_counter()
        self.engine.sync(policy.model)
        synced = time.perf_counter()
        first_seed = self.first_seed(policy.iteration, self.rank, self.world_size)
        batch.rollout = self.rollout(batch, policy.tokenizer, policy.reward, policy.iteration, first_seed)
        self.engine.sleep()
        if isinstance(trainer.datamodule, SuccessFeedback):  # on every rank: the success table is shared
            keys, correct = self.outcomes(batch.rollout)
            trainer.datamodule.record(keys, correct)
        if batch.rollout is not None:
            batch.rollout = batch.rollout.to(policy.device)
        self._log(trainer, pl_module, policy, batch.rollout, synced - start, time.perf_counter() - synced)

    def outcomes(self, rollout: Rollout | None) -> tuple[list[str], Tensor]:
        """The tracked prompts' keys and their samples' correctness [P, k] (none if no group finished)."""
        if rollout is None:
            return [], torch.zeros((0, self.samples_per_prompt))
        tracked = [n for n, key in enumerate(rollout.keys) if key is not None]
        return [rollout.keys[n] for n in tracked], rollout.rewards.correct[tracked]

    def _log(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        policy: RolloutPolicy,
        rollout: Rollout | None,
        sync_s: float,
        rollout_s: float,
    ) -> None:
        """This iteration's rollout metrics over every rank's rollouts (loggers write rank 0's)."""
        iteration = policy.iteration
        metrics = {
            "rollout/sync_seconds": sync_s,
            "rollout/seconds": rollout_s,  # generation, scoring and packing
            "rollout/tokens_per_s": self.new_tokens / rollout_s,
            "rollout/buffer_groups": float(len(self.buffer)),
            "rollout/buffer_trajectories": float(self.buffer.unfinished_trajectories),
            "rollout/groups_finished": 0.0 if rollout is None else float(len(rollout.prompts)),
            "rollout/response_cap": float(self.response_cap(iteration)),  # the length curriculum's stage
        } | shares(self.segment_outcomes, FINISH_REASONS, "rollout/finish_")
        counts = policy.reward.verifier_counts()  # every rank judges its own share of the prompts: summed
        metrics |= counts
        if rollout is not None:
            lengths = rollout.completion_lengths.float()
            completion = rollout.versions >= 0
            metrics |= {
                "rollout/reward": rollout.rewards.total.mean(),
                "rollout/accuracy": rollout.rewards.correct.mean(),
                "rollout/response_len_mean": lengths.mean(),
                "rollout/response_len_max": lengths.max(),
                # tokens sampled by an older policy than π_θi: what partial rollouts trade for speed
                "rollout/stale_token_share": ((rollout.versions < iteration) & completion).sum() / completion.sum(),
                # groups whose k rewards differ: the only ones that carry a learning signal
                "rollout/mixed_groups": (rollout.rewards.total.std(dim=1) > 0).float().mean(),
            } | rollout.rewards.breakdown(self.reasons_seen)
            for term, reasons in rollout.rewards.reasons.items():
                self.reasons_seen.setdefault(term, set()).update(reasons)
            pl_module.log_dict(
                {"reward": metrics["rollout/reward"], "acc": metrics["rollout/accuracy"]},
                prog_bar=True,
                logger=False,
                batch_size=1,
            )
        metrics = {key: float(value) for key, value in metrics.items()}
        log_iteration(trainer, over_ranks(all_ranks(metrics), summed=(*SUMMED, *counts)), iteration)
        if (
            rollout is not None
            and isinstance(trainer.logger, TensorBoardLogger)
            and iteration % self.text_samples_every_n_iterations == 0
        ):
            k = rollout.samples_per_prompt
            lines = [
                f"`{rollout.prompts[n // k]}` → `{rollout.texts[n]}` (reward {rollout.rewards.explain(n)})"
                for n in range(0, min(len(rollout.texts), 4 * k), k)
            ]
            trainer.logger.experiment.add_text("rollout/samples", "\n\n".join(lines), global_step=iteration)
