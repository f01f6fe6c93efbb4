"""The trajectories of one RL iteration, packed into tensors for the policy update.

Shapes: N = P·k trajectories (prompt-major: trajectory n belongs to prompt n // k), T = longest
prompt + completion. Sequences are right-padded; ``loss_mask`` marks the completion tokens trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from k15.data.encode import concat_model_inputs
from k15.reward.module import Rewards
from k15.rollout.trajectory import Group


@dataclass
class Rollout:
    input_ids: Tensor  # [N, T]
    attention_mask: Tensor  # [N, T]
    loss_mask: Tensor  # [N, T] 1 on the completion tokens the loss trains on
    versions: Tensor  # [N, T] the iteration whose π_θi sampled each completion token, -1 elsewhere
    rewards: Rewards  # each [P, k]
    completion_lengths: Tensor  # [N]
    finish_reasons: list[str]  # [N]
    texts: list[str]  # [N] decoded completions
    prompts: list[str]  # [P]
    keys: list[str | None]  # [P] the data module's prompt ids (None where it has none)
    samples_per_prompt: int
    engine_logprobs: Tensor | None = None  # [N, T] the engine's log π of each completion token, if reported
    model_inputs: list[dict[str, Tensor]] = field(
        default_factory=list
    )  # [N] each row's extra forward() inputs (pixel_values)

    def to(self, device) -> None:
        """Move the tensors the update reads to ``device`` (rewards stay where scoring made them)."""
        self.input_ids, self.attention_mask, self.loss_mask, self.versions = (
            t.to(device) for t in (self.input_ids, self.attention_mask, self.loss_mask, self.versions)
        )
        if self.engine_logprobs is not None:
            self.engine_logprobs = self.engine_logprobs.to(device)
        self.model_inputs = [{key: value.to(device) for key, value in row.items()} for row in self.model_inputs]

    def inputs_for(self, rows: Tensor) -> dict[str, Tensor]:
        """The extra forward() inputs of ``rows``, batched (nothing for text prompts)."""
        return concat_model_inputs([self.model_inputs[n] for n in rows.tolist()]) if self.model_inputs else {}

    @property
    def num_tokens(self) -> int:
        return int(self.completion_lengths.sum())


def pack_trajectories(groups: list[Group], pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """prompt + completion per trajectory, right-padded, prompt-major.

    → input_ids, attention_mask, versions (policy version per completion token, -1 elsewhere),
    engine log-probs (0 elsewhere; None unless every trajectory has them), each [N, T].
    """
    rows = [(g.prompt_ids, t) for g in groups for t in g.trajectories]
    width = max(len(p) + len(t) for p, t in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    versions = torch.full((len(rows), width), -1, dtype=torch.long)
    with_logprobs = all(t.logprobs is not None for _, t in rows)
    engine_logprobs = torch.zeros((len(rows), width)) if with_logprobs else None
    for n, (p, t) in enumerate(rows):
        end = len(p) + len(t)
        input_ids[n, :end] = torch.tensor(p + t.token_ids)
        attention_mask[n, :end] = 1
        versions[n, len(p) : end] = torch.tensor(t.versions, dtype=torch.long)
        if with_logprobs:
            engine_logprobs[n, len(p) : end] = torch.tensor(t.logprobs)
    return input_ids, attention_mask, versions, engine_logprobs
