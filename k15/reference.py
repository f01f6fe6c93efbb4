"""ReferenceModule: the frozen log-prob scorer π_ref the policy loss compares against."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from k15.logprobs import token_logprobs


class ReferenceModule(LightningModule):
    """log π_ref(y_t | …) for every token of a rollout, without gradients.

    Args:
        mode: ``iteration`` — π_ref = π_θi, the policy at the start of the RL iteration (k1.5:
            the reference resets every iteration). It scores with the policy's own weights
            before any update, so it costs one forward pass and no memory.
            ``initial`` — π_ref = the policy when training started: a frozen copy, kept in the
            checkpoint, for a KL-to-initialisation objective.
        trajectories_per_pass: trajectories scored per forward pass (bounds activation memory).
    """

    def __init__(self, mode: Literal["iteration", "initial"] = "iteration", trajectories_per_pass: int = 256):
        super().__init__()
        self.mode = mode
        self.trajectories_per_pass = trajectories_per_pass
        self.initial: nn.Module | None = None

    def attach(self, policy: nn.Module) -> None:
        """Called once the policy is built; ``initial`` mode snapshots it here."""
        if self.mode == "initial" and self.initial is None:
            self.initial = copy.deepcopy(policy).eval().requires_grad_(False)

    @torch.no_grad()
    def forward(
        self,
        policy: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        model_inputs: Callable[[Tensor], dict[str, Tensor]] = lambda rows: {},
        temperature: float = 1.0,
        chunk_tokens: int = 1024,
    ) -> Tensor:
        """[N, T] log-probs; ``model_inputs(rows)`` gives those rows' extra forward inputs (pixel_values);
        ``temperature`` and ``chunk_tokens``: see ``k15.logprobs.token_scores``."""
        scorer = self.initial if self.mode == "initial" else policy
        lengths = attention_mask.sum(dim=1)
        out = torch.zeros(input_ids.shape, device=input_ids.device)
        # rows sorted by length, so each pass pads only to its own longest row; the number of
        # passes depends on N alone, so sharded ranks stay in step
        for rows in lengths.argsort(descending=True).split(self.trajectories_per_pass):
            width = int(lengths[rows].max())
            out[rows, :width] = token_logprobs(
                scorer,
                input_ids[rows, :width],
                attention_mask[rows, :width],
                temperature,
                chunk_tokens,
                **model_inputs(rows),
            )
        return out
