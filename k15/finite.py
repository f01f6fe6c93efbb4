"""Finite or nothing: a non-finite update is skipped, a run of them stops training, and non-finite
weights are never written to a checkpoint or an export.

One overflowing step (τ → 0, a huge learning rate, a degenerate batch) turns the loss or the
gradient into inf/NaN; an optimizer step taken on it writes NaN into every weight, and every
checkpoint and export after that is garbage that still loads. So each optimizer step first checks
its loss and gradient norm (``FiniteGuard``): a bad step is dropped and counted, and
``max_skipped_in_a_row`` bad steps in a row stop the run with a non-zero exit, leaving the last good
checkpoint as it was. ``require_finite_weights`` guards every write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from k15.errors import RunStopped, require_at_least_one


def local(tensor: Tensor) -> Tensor:
    """This rank's shard of a DTensor (FSDP2), its partition of a ZeRO-3 parameter (which is an
    empty placeholder outside a gather), or the tensor itself."""
    if hasattr(tensor, "ds_tensor"):
        return tensor.ds_tensor
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every element of every tensor (this rank's shards) is finite."""
    flags = [torch.isfinite(local(t)).all() for t in tensors if t is not None]
    return bool(torch.stack(flags).all()) if flags else True


def require_finite_weights(model: nn.Module, what: str, agree: Callable[[bool], bool] = lambda ok: ok) -> None:
    """Raise ``RunStopped`` before ``what`` is written if any trained weight is inf/NaN on any rank.
    ``agree`` combines the ranks' answers (every rank must reach the same decision). Frozen weights
    are as loaded, and may not be numbers at all (QLoRA's 4-bit codes are stored in a float dtype)."""
    if not agree(all_finite(p for p in model.parameters() if p.requires_grad)):
        raise RunStopped(
            f"the policy's weights are non-finite (an update overflowed): refusing to write {what}; the last good "
            "checkpoint is untouched"
        )


class FiniteGuard:
    """Decides whether an optimizer step may be taken, and counts the ones it drops.

    Args:
        max_skipped_in_a_row: this many consecutive non-finite steps stop the run (``RunStopped``).
    """

    def __init__(self, max_skipped_in_a_row: int = 3):
        require_at_least_one("model", max_skipped_steps_in_a_row=max_skipped_in_a_row)
        self.max_skipped_in_a_row = max_skipped_in_a_row
        self.skipped = 0  # over the whole run (resumed runs included)
        self.in_a_row = 0

    def allows(self, *values: Tensor, agree: Callable[[bool], bool] = lambda ok: ok) -> bool:
        """Whether to take the step whose ``values`` (its loss, its gradient norm …) these are: True
        if all are finite (on every rank, per ``agree``), else False and the step is counted as
        dropped. Raises ``RunStopped`` once ``max_skipped_in_a_row`` were dropped in a row."""
        if agree(all_finite(values)):
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_skipped_in_a_row:
            raise RunStopped(
                f"{self.in_a_row} optimizer steps in a row had a non-finite loss or gradient norm (last: "
                f"{', '.join(f'{float(v):g}' for v in values)}); stopped without taking them. Lower the learning "
                "rate, raise tau, or check the rewards; the last good checkpoint is untouched"
            )
        return False

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.in_a_row = state["skipped"], state["in_a_row"]
