"""RunSummary: a closing table on stdout and ``summary.json`` in the run's log directory.

    heldout_acc_before   held-out accuracy at the first evaluation: before any update when the
                         trainer's sanity check covers the held-out set (num_sanity_val_steps: -1);
                         greedy, or pass@1 over n samples when the module has an ``evaluation``
    heldout_acc_after    held-out accuracy at the last evaluation
    heldout_tokens_before mean held-out response length (tokens, <eos> included) at the
    heldout_tokens_after  same two evaluations: what long2short shortens (k1.5 §2.4)
    finished             true when fit ran to its end; false when it stopped early (a signal, an
                         error: ``stopped`` says which)
    wall_s               fit wall time, seconds, summed over the run's resumed parts (each up to
                         the checkpoint the next part resumed from)
    tokens_per_s         tokens trained on per second of ``wall_s``: in finished RL trajectories,
                         or supervised (SFT)
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
from k15.metrics import log_iteration

METRIC = "heldout/accuracy"
SAMPLED_METRIC = "heldout/pass@1"  # an evaluation's (k15.evaluation), which logs its own starting point
TOKENS = "heldout/tokens_mean"


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
        self.state = {
            "heldout_acc_before": None,
            "heldout_acc_after": None,
            "heldout_tokens_before": None,
            "heldout_tokens_after": None,
            "tokens": 0,
            "iteration_seconds": [],
            "wall_s": 0.0,
        }
        self.started = self.batch_started = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # on_validation_end: after the module's on_validation_epoch_end, where an evaluation logs
        sampled = trainer.callback_metrics.get(SAMPLED_METRIC)
        accuracy = trainer.callback_metrics.get(METRIC) if sampled is None else sampled
        if accuracy is None:
            return
        tokens = trainer.callback_metrics.get(TOKENS)
        tokens = None if tokens is None else round(float(tokens), 2)
        if self.state["heldout_acc_before"] is None:
            self.state["heldout_acc_before"] = float(accuracy)
            self.state["heldout_tokens_before"] = tokens
        self.state["heldout_acc_after"] = float(accuracy)
        self.state["heldout_tokens_after"] = tokens
        if trainer.sanity_checking and trainer.logger is not None and sampled is None:
            # Lightning drops sanity-check metrics; these are the curves' starting points
            start = {METRIC: float(accuracy)} | ({TOKENS: tokens} if tokens is not None else {})
            trainer.logger.log_metrics(start, step=trainer.global_step)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self.batch_started = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        seconds = time.perf_counter() - self.batch_started
        self.state["tokens"] += batch_tokens(batch)
        self.state["iteration_seconds"].append(seconds)
        step = trainer.fit_loop.epoch_loop.batch_progress.total.completed  # this batch's index
        log_iteration(trainer, {"perf/iteration_seconds": seconds, "perf/trained_tokens": self.state["tokens"]}, step)

    def wall(self) -> float:
        """Seconds of fit so far: this process's, plus those of the runs it resumed."""
        return self.state["wall_s"] + (time.perf_counter() - self.started if self.started else 0.0)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, finished=True)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.write(trainer, finished=False, stopped=f"{type(exception).__name__}: {exception}")

    def write(self, trainer: Trainer, finished: bool, stopped: str | None = None) -> None:
        wall = self.wall()
        summary = {
            "heldout_acc_before": self.state["heldout_acc_before"],
            "heldout_acc_after": self.state["heldout_acc_after"],
            "heldout_tokens_before": self.state["heldout_tokens_before"],
            "heldout_tokens_after": self.state["heldout_tokens_after"],
            "finished": finished,
            **({"stopped": stopped} if stopped else {}),
            "wall_s": round(wall, 2),
            "tokens_per_s": round(self.state["tokens"] / wall, 1) if wall else 0.0,  # 0: stopped before fit began
            "trained_tokens": self.state["tokens"],
            "iteration_s_median": percentile(self.state["iteration_seconds"], 50),
            "iteration_s_p90": percentile(self.state["iteration_seconds"], 90),
            "steps": trainer.global_step,
        }
        log_dir = (
            trainer.log_dir if finished else trainer.logger and trainer.logger.log_dir
        )  # log_dir: a collective, every rank asks
        if not trainer.is_global_zero:
            return
        width = max(map(len, summary))
        print("\n".join(["", "k15 run summary"] + [f"  {key:<{width}}  {value}" for key, value in summary.items()]))
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def state_dict(self) -> dict:
        return dict(self.state, wall_s=self.wall())

    def load_state_dict(self, state_dict: dict) -> None:
        self.state.update(state_dict)
