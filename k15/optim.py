"""Optimizers from config: the factory LightningCLI hands a module, checked at start-up, wired for Lightning.

optimizer:    {class_path: torch.optim.AdamW, init_args: {lr: 3e-5}}        → OptimizerCallable
lr_scheduler: {class_path: torch.optim.lr_scheduler.LinearLR, init_args: …}  → LRSchedulerCallable
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-5)


def check_learning_rates(optimizer: OptimizerCallable, key: str = "model.optimizer") -> None:
    """Build ``optimizer`` on a stand-in parameter, so a bad learning rate is a config error at start-up."""
    probe = optimizer([torch.nn.Parameter(torch.zeros(1))])
    for group in probe.param_groups:
        if not (math.isfinite(group["lr"]) and group["lr"] > 0):
            raise ValueError(f"{key}: the learning rate must be a finite number > 0, got {group['lr']}")


def configured_optimizers(
    params: Iterable[torch.nn.Parameter], optimizer: OptimizerCallable, lr_scheduler: LRSchedulerCallable | None
):
    """What ``LightningModule.configure_optimizers`` returns: the optimizer, and its schedule
    stepped after every optimizer step."""
    built = optimizer(params)
    if lr_scheduler is None:
        return built
    return {"optimizer": built, "lr_scheduler": {"scheduler": lr_scheduler(built), "interval": "step"}}
