"""The trajectories of one RL iteration, packed into tensors for the policy update.

Shapes: N = P·k trajectories (prompt-major: trajectory n belongs to prompt n // k), T = longest
prompt + completion. Sequences are right-padded; ``loss_mask`` marks the completion tokens trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from k15.data.encode import concat_model_inputs
from k15.padding import pad_rows, padded_ids
from k15.reward.rewards import Rewards
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

    def to(self, device) -> Rollout:
        """Move the tensors the update reads to ``device`` (rewards stay where scoring made them).

        Returns the rollout, as ``Tensor.to`` and ``Module.to`` do."""
        self.input_ids, self.attention_mask, self.loss_mask, self.versions = (
            t.to(device) for t in (self.input_ids, self.attention_mask, self.loss_mask, self.versions)
        )
        if self.engine_logprobs is not None:
            self.engine_logprobs = self.engine_logprobs.to(device)
        self.model_inputs = [{key: value.to(device) for key, value in row.items()} for row in self.model_inputs]
        return self

    def inputs_for(self, rows: Tensor) -> dict[str, Tensor]:
        """The extra forward() inputs of ``rows``, batched (nothing for text prompts)."""
        return concat_model_inputs([self.model_inputs[n] for n in rows.tolist()]) if self.model_inputs else {}

    @property
    def num_tokens(self) -> int:
        return int(self.completion_lengths.sum())


def concat_rollouts(rollouts: list[Rollout | None]) -> Rollout | None:
    """One rollout of several ranks' (prompt-major order kept; None where a rank has none)."""
    present = [r for r in rollouts if r is not None]
    if len(present) < 2:
        return present[0] if present else None
    width = max(r.input_ids.shape[1] for r in present)

    def rows(key: str, fill) -> Tensor:
        return torch.cat([F.pad(getattr(r, key), (0, width - r.input_ids.shape[1]), value=fill) for r in present])

    def joined(key: str) -> list:
        return [item for r in present for item in getattr(r, key)]

    first = present[0]
    rewards = Rewards(
        total=torch.cat([r.rewards.total for r in present]),
        correct=torch.cat([r.rewards.correct for r in present]),
        parts={name: torch.cat([r.rewards.parts[name] for r in present]) for name in first.rewards.parts},
        reasons={name: [x for r in present for x in r.rewards.reasons[name]] for name in first.rewards.reasons},
    )
    engine = all(r.engine_logprobs is not None for r in present)
    return Rollout(
        input_ids=rows("input_ids", 0),
        attention_mask=rows("attention_mask", 0),
        loss_mask=rows("loss_mask", 0),
        versions=rows("versions", -1),
        rewards=rewards,
        completion_lengths=torch.cat([r.completion_lengths for r in present]),
        finish_reasons=joined("finish_reasons"),
        texts=joined("texts"),
        prompts=joined("prompts"),
        keys=joined("keys"),
        samples_per_prompt=first.samples_per_prompt,
        engine_logprobs=rows("engine_logprobs", 0.0) if engine else None,
        model_inputs=joined("model_inputs"),
    )


def pack_trajectories(groups: list[Group], pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """prompt + completion per trajectory, right-padded, prompt-major.

    → input_ids, attention_mask, versions (policy version per completion token, -1 elsewhere),
    engine log-probs (0 elsewhere; None unless every trajectory has them), each [N, T].
    """
    rows = [(g.prompt_ids, t) for g in groups for t in g.trajectories]
    input_ids, attention_mask = padded_ids([p + t.token_ids for p, t in rows], pad_id)
    versions = pad_rows([[-1] * len(p) + t.versions for p, t in rows], -1)
    engine_logprobs = None
    if all(t.logprobs is not None for _, t in rows):
        engine_logprobs = pad_rows([[0.0] * len(p) + t.logprobs for p, t in rows], 0.0, dtype=torch.float32)
    return input_ids, attention_mask, versions, engine_logprobs
