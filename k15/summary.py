"""RunSummary: a closing table on stdout and ``summary.json`` in the run's log directory.

    heldout_acc_before   held-out accuracy at the first evaluation: before any update when the
                         trainer's sanity check covers the held-out set (num_sanity_val_steps: -1)
    heldout_acc_after    held-out accuracy at the last evaluation
    wall_s               fit wall time, seconds
    tokens_per_s         tokens trained on per second of fit: in finished RL trajectories, or
                         supervised (SFT)
    iteration_s_median,  wall time of one training batch (RL: rollout + update), held-out
    iteration_s_p90      evaluation excluded

It also logs ``perf/iteration_seconds`` and ``perf/trained_tokens`` (cumulative) every batch, so
curves can be drawn against time or tokens rather than iterations.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from k15.data.prompts import PromptBatch
from k15.data.sft import IGNORE_INDEX, SFTBatch

METRIC = "heldout/accuracy"


def batch_tokens(batch: PromptBatch | SFTBatch) -> int:
    if isinstance(batch, SFTBatch):
        return int((batch.labels != IGNORE_INDEX).sum())
    rollout = getattr(batch, "rollout", None)  # None: no group finished (partial rollouts), or not an RL batch
    return 0 if rollout is None else rollout.num_tokens


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0], 3)


class RunSummary(Callback):
    def __init__(self):
        self.state = {"heldout_acc_before": None, "heldout_acc_after": None, "tokens": 0, "iteration_seconds": []}
        self.started = self.batch_started = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        accuracy = trainer.callback_metrics.get(METRIC)
        if accuracy is None:
            return
        if self.state["heldout_acc_before"] is None:
            self.state["heldout_acc_before"] = float(accuracy)
        self.state["heldout_acc_after"] = float(accuracy)
        if trainer.sanity_checking and trainer.logger is not None:
            # Lightning drops sanity-check metrics; this one is the curve's starting point
            trainer.logger.log_metrics({METRIC: float(accuracy)}, step=trainer.global_step)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self.batch_started = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        seconds = time.perf_counter() - self.batch_started
        self.state["tokens"] += batch_tokens(batch)
        self.state["iteration_seconds"].append(seconds)
        pl_module.log_dict({"perf/iteration_seconds": seconds, "perf/trained_tokens": float(self.state["tokens"])}, batch_size=1)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        wall = time.perf_counter() - self.started
        summary = {
            "heldout_acc_before": self.state["heldout_acc_before"],
            "heldout_acc_after": self.state["heldout_acc_after"],
            "wall_s": round(wall, 2),
            "tokens_per_s": round(self.state["tokens"] / wall, 1),
            "trained_tokens": self.state["tokens"],
            "iteration_s_median": percentile(self.state["iteration_seconds"], 50),
            "iteration_s_p90": percentile(self.state["iteration_seconds"], 90),
            "steps": trainer.global_step,
        }
        log_dir = trainer.log_dir  # a collective under multi-process strategies: every rank asks
        if not trainer.is_global_zero:
            return
        width = max(map(len, summary))
        print("\n".join(["", "k15 run summary"] + [f"  {key:<{width}}  {value}" for key, value in summary.items()]))
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state_dict: dict) -> None:
        self.state.update(state_dict)
