"""The trajectories of one RL iteration, packed into tensors for the policy update.

Shapes: N = P·k trajectories (prompt-major: trajectory n belongs to prompt n // k), T = longest
prompt + completion. Sequences are right-padded; ``loss_mask`` marks completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from k15.reward.module import Rewards
from k15.rollout.engine import Completion


@dataclass
class Rollout:
    input_ids: Tensor  # [N, T]
    attention_mask: Tensor  # [N, T]
    loss_mask: Tensor  # [N, T] 1 on completion tokens
    rewards: Rewards  # each [P, k]
    completion_lengths: Tensor  # [N]
    finish_reasons: list[str]  # [N]
    texts: list[str]  # [N] decoded completions
    samples_per_prompt: int
    engine_logprobs: Tensor | None = None  # [N, T] the engine's log π of each completion token, if reported

    def to(self, device) -> None:
        """Move the tensors the update reads to ``device`` (rewards stay where scoring made them)."""
        self.input_ids, self.attention_mask, self.loss_mask = (t.to(device) for t in (self.input_ids, self.attention_mask, self.loss_mask))
        if self.engine_logprobs is not None:
            self.engine_logprobs = self.engine_logprobs.to(device)

    @property
    def num_tokens(self) -> int:
        return int(self.completion_lengths.sum())


def pack_sequences(prompts: list[list[int]], completions: list[list[Completion]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """prompt + completion per trajectory, right-padded. → input_ids, attention_mask, loss_mask [N, T]."""
    rows = [(p, c.token_ids) for p, group in zip(prompts, completions, strict=True) for c in group]
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width))
    for n, (p, c) in enumerate(rows):
        input_ids[n, : len(p) + len(c)] = torch.tensor(p + c)
        attention_mask[n, : len(p) + len(c)] = 1
        loss_mask[n, len(p) : len(p) + len(c)] = 1
    return input_ids, attention_mask, loss_mask


def pack_engine_logprobs(prompts: list[list[int]], completions: list[list[Completion]], width: int) -> Tensor | None:
    """The engine's per-token log-probs at the completion positions of ``pack_sequences``. [N, T]"""
    rows = [(p, c) for p, group in zip(prompts, completions, strict=True) for c in group]
    if any(c.logprobs is None for _, c in rows):
        return None
    out = torch.zeros((len(rows), width))
    for n, (p, c) in enumerate(rows):
        out[n, len(p) : len(p) + len(c.logprobs)] = torch.tensor(c.logprobs)
    return out
