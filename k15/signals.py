"""SIGTERM and SIGINT: finish the current step, save a checkpoint, exit with 128 + the signal's number.

Pre-emptible cloud machines and cluster schedulers send SIGTERM some time before they kill a job.
Lightning's own handler lets the loop stop after the current batch and then exits 0, without a
checkpoint: a scheduler reads that as success and the work since the last periodic checkpoint is
lost. Here the signal only sets a flag; at the next safe point — the end of the current training
step, after the update, where everything (weights, optimizer, replay buffer, success table, data
position, RNG, counters) is consistent — every rank learns whether any rank was signalled, the
whole RL state is saved as ``last.ckpt`` in the checkpoint folder, and the run stops with
``RunStopped`` (exit code 143 for SIGTERM, 130 for SIGINT, as shells report a signal).
``summary.json`` then says ``"finished": false``. Resume with ``--ckpt_path <that file>``.
A second Ctrl+C stops at once, without a checkpoint.
"""

from __future__ import annotations

import signal
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from k15.errors import RunStopped

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CheckpointOnSignal(Callback):
    """Added to every k15 module's callbacks (``LanguageModule.configure_callbacks``)."""

    def __init__(self):
        self.received: int | None = None
        self.previous: dict[int, object] = {}
        self.children: list = []  # the launcher's child processes (other ranks), told too

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # installed here, after Lightning registers its own handlers, which this one replaces
        if trainer.received_sigterm:  # a signal that arrived while the run was starting
            self.received = signal.SIGTERM
        self.children = list(getattr(trainer.strategy.launcher, "procs", None) or [])
        try:
            self.previous = {signum: signal.signal(signum, self.handle) for signum in SIGNALS}
        except ValueError:  # not the main thread (e.g. a notebook's worker): signals cannot be caught here
            self.previous = {}

    def handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        if self.received is None:
            for child in self.children:
                child.send_signal(signum)
        self.received = signum

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        signum = self.received or signal.SIGTERM  # a rank told by another rank
        folder = (
            Path(trainer.checkpoint_callback.dirpath)
            if trainer.checkpoint_callback
            else Path(trainer.log_dir) / "checkpoints"
        )
        path = folder / "last.ckpt"
        trainer.save_checkpoint(path)
        done = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        raise RunStopped(
            f"stopped by {signal.Signals(signum).name} after {done} training batches; resume with --ckpt_path={path}",
            128 + signum,
        )

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
