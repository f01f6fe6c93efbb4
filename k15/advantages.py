"""Advantages: how a prompt's k rewards become each trajectory's weight in the policy gradient.

All take rewards [P, k] (prompt p's k samples in row p) and return a [N] = [P·k], prompt-major,
as the losses in ``k15.losses`` read them. r̄ = (1/k) Σ_j r_j is a prompt's mean reward.
"""

from __future__ import annotations

from torch import Tensor


def mean_baseline_advantages(rewards: Tensor) -> Tensor:
    """a_j = r_j − r̄ (k1.5, Dr.GRPO). [P, k] → [N]."""
    return (rewards - rewards.mean(dim=1, keepdim=True)).flatten()


def normalized_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """GRPO's a_j = (r_j − r̄) / (std_j r + eps), the population std of the prompt's k rewards. [P, k] → [N]."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    return (centered / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)).flatten()


def leave_one_out_advantages(rewards: Tensor) -> Tensor:
    """RLOO's a_j = r_j − 1/(k−1) Σ_{i≠j} r_i = k/(k−1) · (r_j − r̄): each sample's baseline is the
    mean of the others, so it does not depend on the sample itself (an unbiased estimate). k ≥ 2."""
    k = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return (rewards - others).flatten()


def correct_only_advantages(rewards: Tensor, threshold: float) -> Tensor:
    """ReST's a_j = 1[r_j ≥ threshold]: imitate the correct samples, ignore the rest (no negative
    gradient, no baseline: k = 1 works). [P, k] → [N]."""
    return (rewards >= threshold).to(rewards.dtype).flatten()
