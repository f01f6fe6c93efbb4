"""CurriculumDataModule: RL prompts drawn by curriculum stage and success rate, resumable exactly.

Each training batch is decided when the loop consumes it, not when the data loader prefetches it:
the loader yields only the iteration's index, and ``on_before_batch_transfer`` (run by Lightning
in the training loop, in the main process) draws the P prompts. So a draw always sees the success
rates of every finished iteration, and the checkpoint taken after iteration i holds exactly the
sampler state that drew i: a resumed run draws the batches the uninterrupted run would have.

    draw(i):  stage(i) filters the pool → weights w = max(1 − s, floor) (or 1) → P·world prompts
              without replacement from a seeded generator → this rank's P
    record(keys, correct):  s ← (1 − β)·s + β·mean_k(correct), gathered from every rank

The pool is read at setup with the reader every data path shares (bad samples skipped and
counted, ``k15/data/pool.py``), less the prompts too long for the policy (``too_long``); every
curriculum stage must admit at least an iteration's prompts. See ``k15/data/sampling.py`` for the math.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch
import torch.distributed as dist
from lightning.fabric.utilities.rank_zero import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader

from k15.data.pool import PromptPool, load_pool
from k15.data.prompts import PromptBatch, ShardDataModule, all_ranks
from k15.data.sampling import Stage, sampling_weights, stage_at, updated_success
from k15.data.shards import skip_summary
from k15.errors import K15Error, require_at_least_one
from k15.metrics import log_iteration


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
        require_at_least_one("data", prompts_per_iteration=prompts_per_iteration, iterations=iterations)
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
            limit = self.token_limit(
                "max_rollout_prompt_tokens"
            )  # the module exists, its model may not yet: not needed
            check = None if limit is None else lambda record: self.prompt_problem(record, limit)
            self.pool = load_pool(self.train_urls, check, f"train_shards {self.train_shards!r}")
            self.difficulties = torch.tensor(self.pool.difficulties)
            self.success = torch.zeros(len(self.pool))
            self.index = {key: i for i, key in enumerate(self.pool.keys)}
            rank_zero_info(f"k15: {len(self.pool)} RL prompts loaded; skipped: {skip_summary(self.pool.skipped)}")
            self._check_stages()

    def _check_stages(self) -> None:
        wanted = self.prompts_per_iteration * self.trainer.world_size
        for i, stage in enumerate(self.stages):
            admitted = int(stage.admits(self.difficulties).sum())
            if admitted < wanted:
                raise K15Error(
                    f"data stages[{i}] ({stage}) admits {admitted} of the {len(self.pool)} usable prompts of "
                    f"{self.train_shards!r}; an iteration needs {wanted} (prompts_per_iteration × processes)"
                )

    def train_dataloader(self) -> DataLoader:
        return self.placeholders(self.iterations)

    def draw(self) -> PromptBatch:
        """This iteration's P prompts, with the latest success rates."""
        iteration, self.draws = self.draws, self.draws + 1
        stage = stage_at(self.stages, iteration)
        candidates = stage.admits(self.difficulties).nonzero().squeeze(1)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        wanted = self.prompts_per_iteration * world
        # with floor 0, solved prompts (weight 0) are drawn only when too few others remain
        weights = sampling_weights(self.success[candidates], self.floor, self.prioritized).clamp(min=1e-12)
        # every rank draws the same P·world prompts (same generator, same success table) and takes its share
        picked = candidates[torch.multinomial(weights, wanted, replacement=False, generator=self.generator)]
        mine = picked[rank * self.prompts_per_iteration : (rank + 1) * self.prompts_per_iteration].tolist()
        self._log_sampler(iteration, self.stages.index(stage), candidates)
        self.log_skipped(self.pool.skipped)
        batch = self.collate_prompts(
            [
                {
                    "prompt": self.pool.prompts[i],
                    "answer": self.pool.answers[i],
                    "difficulty": self.pool.difficulties[i],
                    "images": self.pool.images[i],
                }
                for i in mine
            ]
        )
        batch.keys = [self.pool.keys[i] for i in mine]
        return batch

    def record(self, keys: list[str], correct: Tensor) -> None:
        """Feed the success table: ``correct`` [P, k] for the prompts ``keys`` (this rank's)."""
        outcomes = list(zip(keys, correct.float().mean(dim=1).tolist(), strict=True))
        outcomes = [o for part in all_ranks(outcomes) for o in part]  # every rank keeps the same table
        for key, share in outcomes:
            i = self.index[key]
            self.success[i] = updated_success(float(self.success[i]), share, self.success_decay)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._check_ranks_agree()

    def _check_ranks_agree(self) -> None:
        """Every rank must hold the same sampler state: the draws, and rank 0's checkpoint, rely on it."""
        state = hashlib.sha256(
            self.success.numpy().tobytes() + self.generator.get_state().numpy().tobytes()
        ).hexdigest()
        states = all_ranks((state, self.draws))
        if len(set(states)) > 1:
            raise RuntimeError(f"curriculum sampler states differ across ranks after draw {self.draws}: {states}")

    def _log_sampler(self, iteration: int, stage: int, candidates: Tensor) -> None:
        success = self.success[candidates]  # self.log is not allowed in batch-transfer hooks; the loggers are
        log_iteration(
            self.trainer,
            {
                "data/stage": stage,
                "data/stage_prompts": len(candidates),
                "data/success_mean": success.mean(),
                "data/solved_share": (success >= 1).float().mean(),
            },
            step=iteration,
        )

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "success": self.success.clone(), "draws": self.draws}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.success is not None and len(state_dict["success"]) != len(self.success):
            raise K15Error(
                f"the checkpoint's success table covers {len(state_dict['success'])} prompts, the shards now hold "
                f"{len(self.success)}: resume with the shards the run started with"
            )
        self.generator.set_state(state_dict["generator"])
        self.draws = state_dict["draws"]
        self.success = state_dict["success"].clone()
