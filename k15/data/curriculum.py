"""CurriculumDataModule: RL prompts drawn by curriculum stage and success rate, resumable exactly.

Each training batch is decided when the loop consumes it, not when the data loader prefetches it:
the loader yields only the iteration's index, and ``on_before_batch_transfer`` (run by Lightning
in the training loop, in the main process) draws the P prompts. So a draw always sees the success
rates of every finished iteration, and the checkpoint taken after iteration i holds exactly the
sampler state that drew i: a resumed run draws the batches the uninterrupted run would have.

    draw(i):  stage(i) filters the pool → weights w = max(1 − s, floor) (or 1) → P·world prompts
              without replacement from a seeded generator → this rank's P
    record(keys, correct):  s ← (1 − β)·s + β·mean_k(correct), gathered from every rank

See ``k15/data/sampling.py`` for the math and ``k15/data/pool.py`` for how bad samples are skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.distributed as dist
from lightning.fabric.utilities.rank_zero import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from k15.data.pool import PromptPool, load_pool
from k15.data.prompts import PromptBatch, ShardDataModule
from k15.data.sampling import Stage, sampling_weights, stage_at, updated_success


class IterationIndices(IterableDataset):
    """0, 1, …, n − 1: placeholders the data module turns into prompt batches when consumed."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))


class CurriculumDataModule(ShardDataModule):
    """RL prompts with curriculum stages and prioritized sampling by tracked success rate.

    Args:
        prompts_per_iteration: P, prompts per RL iteration (per process).
        iterations: RL iterations per epoch.
        stages: curriculum, e.g. ``[{until: 20, max_difficulty: 2}, {min_difficulty: 1}]``
            (None: one stage with every prompt).
        sampling: ``prioritized`` (∝ max(1 − s_i, floor)) or ``uniform``.
        floor: smallest weight a prompt keeps, so solved prompts still come back now and then.
        success_decay: β of the success-rate update (1: the latest iteration's rate only).
        **kwargs: see ``ShardDataModule`` (shards, held-out set, seed).
    """

    def __init__(
        self,
        *args,
        prompts_per_iteration: int = 16,
        iterations: int = 100,
        stages: list[Stage] | None = None,
        sampling: Literal["prioritized", "uniform"] = "prioritized",
        floor: float = 0.05,
        success_decay: float = 1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.prompts_per_iteration = prompts_per_iteration
        self.iterations = iterations
        self.stages = stages or [Stage()]
        self.prioritized = sampling == "prioritized"
        self.floor = floor
        self.success_decay = success_decay
        self.pool: PromptPool | None = None
        self.difficulties: Tensor | None = None
        self.success: Tensor | None = None  # s_i, aligned with the pool
        self.index: dict[str, int] = {}
        self.generator = torch.Generator().manual_seed(self.seed)
        self.draws = 0  # batches drawn = the iteration the next draw is for

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.pool is None and stage == "fit":
            self.pool = load_pool(self.train_urls)
            self.difficulties = torch.tensor(self.pool.difficulties)
            self.success = torch.zeros(len(self.pool))
            self.index = {key: i for i, key in enumerate(self.pool.keys)}
            skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.pool.skipped.items())) or "none"
            rank_zero_info(f"k15: {len(self.pool)} RL prompts loaded; skipped: {skipped}")

    def train_dataloader(self) -> DataLoader:
        return DataLoader(IterationIndices(self.iterations), batch_size=None)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, int):  # a training placeholder: draw now, with the latest success rates
            return self.draw()
        return batch

    def draw(self) -> PromptBatch:
        iteration, self.draws = self.draws, self.draws + 1
        if iteration == 0:
            self._log_skipped()
        stage = stage_at(self.stages, iteration)
        candidates = stage.admits(self.difficulties).nonzero().squeeze(1)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        wanted = self.prompts_per_iteration * world
        if len(candidates) < wanted:
            raise ValueError(f"curriculum stage {stage} admits {len(candidates)} prompts; an iteration needs {wanted}")
        # with floor 0, solved prompts (weight 0) are drawn only when too few others remain
        weights = sampling_weights(self.success[candidates], self.floor, self.prioritized).clamp(min=1e-12)
        # every rank draws the same P·world prompts (same generator, same success table) and takes its share
        picked = candidates[torch.multinomial(weights, wanted, replacement=False, generator=self.generator)]
        mine = picked[rank * self.prompts_per_iteration : (rank + 1) * self.prompts_per_iteration].tolist()
        self._log_sampler(iteration, self.stages.index(stage), candidates)
        batch = self.collate_prompts(
            [{"prompt": self.pool.prompts[i], "answer": self.pool.answers[i], "difficulty": self.pool.difficulties[i], "images": self.pool.images[i]}
             for i in mine]
        )
        batch.keys = [self.pool.keys[i] for i in mine]
        return batch

    def record(self, keys: list[str], correct: Tensor) -> None:
        """Feed the success table: ``correct`` [P, k] for the prompts ``keys`` (this rank's)."""
        outcomes = list(zip(keys, correct.float().mean(dim=1).tolist(), strict=True))
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, outcomes)  # every rank keeps the same table
            outcomes = [o for part in gathered for o in part]
        for key, share in outcomes:
            i = self.index[key]
            self.success[i] = updated_success(float(self.success[i]), share, self.success_decay)
        if distributed:
            self._check_ranks_agree()

    def _check_ranks_agree(self) -> None:
        """Every rank must hold the same sampler state: the draws, and rank 0's checkpoint, rely on it."""
        state = hashlib.sha256(self.success.numpy().tobytes() + self.generator.get_state().numpy().tobytes()).hexdigest()
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, (state, self.draws))
        if len(set(states)) > 1:
            raise RuntimeError(f"curriculum sampler states differ across ranks after draw {self.draws}: {states}")

    def _log_sampler(self, iteration: int, stage: int, candidates: Tensor) -> None:
        logger = self.trainer.logger
        if logger is not None:  # self.log is not allowed in batch-transfer hooks; the logger is
            success = self.success[candidates]
            logger.log_metrics(
                {"data/stage": float(stage), "data/stage_prompts": float(len(candidates)), "data/success_mean": float(success.mean()),
                 "data/solved_share": float((success >= 1).float().mean())},
                step=iteration,
            )

    def _log_skipped(self) -> None:
        logger = self.trainer.logger
        if logger is not None and self.pool.skipped:
            logger.log_metrics({f"data/skipped/{reason}": float(n) for reason, n in self.pool.skipped.items()}, step=0)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "success": self.success.clone(), "draws": self.draws}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.success is not None and len(state_dict["success"]) != len(self.success):
            raise ValueError(
                f"the checkpoint's success table covers {len(state_dict['success'])} prompts, the shards now hold "
                f"{len(self.success)}: resume with the shards the run started with"
            )
        self.generator.set_state(state_dict["generator"])
        self.draws = state_dict["draws"]
        self.success = state_dict["success"].clone()
