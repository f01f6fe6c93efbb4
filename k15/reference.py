"""ReferenceModule: the frozen log-prob scorer π_ref the policy loss compares against."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from k15.logprobs import placeholder_loss, token_logprobs
from k15.packing import token_budget_micro_batches


class ReferenceModule(LightningModule):
    """log π_ref(y_t | …) for every token of a rollout, without gradients.

    Args:
        mode: ``iteration`` — π_ref = π_θi, the policy at the start of the RL iteration (k1.5:
            the reference resets every iteration). It scores with the policy's own weights
            before any update, so it costs one forward pass and no memory.
            ``initial`` — π_ref = the policy when training started: a frozen copy, kept in the
            checkpoint, for a KL-to-initialisation objective.
        max_tokens_per_pass: real tokens scored per packed forward pass, bounding activation memory
            (None: the policy's ``max_tokens_per_micro_batch``; a pass has no backward, so this may
            be larger).
    """

    def __init__(self, mode: Literal["iteration", "initial"] = "iteration", max_tokens_per_pass: int | None = None):
        super().__init__()
        self.mode = mode
        self.max_tokens_per_pass = max_tokens_per_pass
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
        max_tokens: int | None = None,
        most: Callable[[int], int] = lambda count: count,
    ) -> Tensor:
        """[N, T] log-probs; ``model_inputs(rows)`` gives those rows' extra forward inputs (pixel_values);
        ``temperature`` and ``chunk_tokens``: see ``k15.logprobs.token_scores``. Rows run packed,
        ≤ ``max_tokens_per_pass`` (else ``max_tokens``) real tokens a pass; ``most``: the largest
        count over sharded ranks, which all run that many passes (see ``k15.update.update_policy``)."""
        scorer = self.initial if self.mode == "initial" else policy
        lengths = attention_mask.sum(dim=1)
        rows = torch.arange(len(input_ids), device=input_ids.device)
        passes = token_budget_micro_batches(lengths, rows, self.max_tokens_per_pass or max_tokens) if len(rows) else []
        out = torch.zeros(input_ids.shape, device=input_ids.device)
        for turn in range(most(len(passes))):
            if turn >= len(passes):
                placeholder_loss(scorer, input_ids.device, chunk_tokens)
                continue
            mb = passes[turn]
            width = int(lengths[mb].max())
            out[mb, :width] = token_logprobs(
                scorer, input_ids[mb, :width], attention_mask[mb, :width], temperature, chunk_tokens, **model_inputs(mb)
            )
        return out
