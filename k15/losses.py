"""Policy losses: pure tensor functions, and the small classes YAML selects them by.

Notation (one RL iteration i, P prompts × k samples = N trajectories, T token positions):
    logp      [N, T]  log π_θ(y_t | x, y_<t), the policy being updated
    ref_logp  [N, T]  log π_θi(y_t | x, y_<t), the policy at the start of the iteration (fixed)
    mask      [N, T]  1 on the tokens the loss sees (the completion), 0 elsewhere
    rewards   [P, k]  r_j per trajectory
    a         [N]     advantages, flattened prompt-major (trajectory n belongs to prompt n // k)

The registry is the class hierarchy: every ``PolicyLoss`` subclass imported here can be named in
YAML (``loss: {class_path: GRPOLoss}``), so swapping the loss is one key.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def mean_baseline_advantages(rewards: Tensor) -> Tensor:
    """a_j = r_j − r̄ with r̄ = (1/k) Σ_j r_j over the k samples of one prompt. [P, k] → [N]."""
    return (rewards - rewards.mean(dim=1, keepdim=True)).flatten()


def normalized_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """GRPO's a_j = (r_j − r̄) / (std_j r + eps) over the k samples of one prompt. [P, k] → [N]."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    return (centered / (rewards.std(dim=1, keepdim=True, unbiased=False) + eps)).flatten()


def sequence_log_ratio(logp: Tensor, ref_logp: Tensor, mask: Tensor) -> Tensor:
    """ℓ_j = Σ_t mask_t · [log π_θ(y_t) − log π_θi(y_t)], the log-ratio of whole trajectories. → [N]."""
    return ((logp - ref_logp) * mask).sum(dim=1)


def kimi_k15_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor, advantages: Tensor, tau: float) -> Tensor:
    """The k1.5 online-mirror-descent surrogate (paper §2.3.2, Eq. 3 as its gradient):

        L(θ) = 1/(2τ) · mean_j (a_j − τ·ℓ_j)²,      a_j = r_j − r̄

    −∇L = mean_j [ a_j ∇log π_θ(y_j) − (τ/2) ∇ℓ_j² ]: REINFORCE with a mean baseline at θ = θ_i
    (where ℓ_j = 0), plus a squared-log-ratio term that keeps θ near θ_i. No value network.
    """
    ratio = sequence_log_ratio(logp, ref_logp, mask)
    return ((advantages - tau * ratio) ** 2).mean() / (2 * tau)


def ppo_clip_loss(logp: Tensor, old_logp: Tensor, mask: Tensor, advantages: Tensor, clip_eps: float) -> Tensor:
    """PPO/GRPO clipped surrogate, averaged over loss tokens:

    L = −Σ_{j,t} min(ρ_jt a_j, clip(ρ_jt, 1−ε, 1+ε) a_j) / Σ mask,    ρ_jt = π_θ(y_t)/π_old(y_t)
    """
    rho = torch.exp(logp - old_logp)
    a = advantages[:, None]
    per_token = torch.minimum(rho * a, rho.clamp(1 - clip_eps, 1 + clip_eps) * a)
    return -(per_token * mask).sum() / mask.sum().clamp(min=1)


class PolicyLoss:
    """A loss = how rewards become advantages + how log-probs and advantages become a scalar.

    ``group_baseline``: the advantages compare a prompt's k samples with each other, so k = 1 gives
    every trajectory advantage 0 and nothing is learned (the policy refuses k < 2).
    """

    group_baseline = True

    def advantages(self, rewards: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, logp: Tensor, ref_logp: Tensor, mask: Tensor, advantages: Tensor) -> Tensor:
        raise NotImplementedError

    def micro_batch_weight(self, part_mask: Tensor, whole_mask: Tensor) -> float:
        """The weight of a micro-batch's loss in its step's: the loss is a mean over trajectories
        (k1.5), so a part of the rows weighs rows_part / rows_whole. Token-mean losses override."""
        return len(part_mask) / len(whole_mask)


class KimiLoss(PolicyLoss):
    """Kimi k1.5 policy loss.

    Args:
        tau: τ, weight of the stay-near-π_θi term; larger τ = smaller steps.
    """

    def __init__(self, tau: float = 0.5):
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"KimiLoss.tau must be a finite number > 0 (it divides the loss), got {tau}")
        self.tau = tau

    def advantages(self, rewards: Tensor) -> Tensor:
        return mean_baseline_advantages(rewards)

    def __call__(self, logp, ref_logp, mask, advantages):
        return kimi_k15_loss(logp, ref_logp, mask, advantages, self.tau)


class GRPOLoss(PolicyLoss):
    """GRPO (DeepSeekMath): group-normalised advantages, PPO clipping against π_θi, no KL term.

    Args:
        clip_eps: ε, the clipping range of the probability ratio.
    """

    def __init__(self, clip_eps: float = 0.2):
        if not (math.isfinite(clip_eps) and clip_eps > 0):
            raise ValueError(f"GRPOLoss.clip_eps must be a finite number > 0, got {clip_eps}")
        self.clip_eps = clip_eps

    def advantages(self, rewards: Tensor) -> Tensor:
        return normalized_advantages(rewards)

    def __call__(self, logp, ref_logp, mask, advantages):
        return ppo_clip_loss(logp, ref_logp, mask, advantages, self.clip_eps)

    def micro_batch_weight(self, part_mask, whole_mask):
        return float(part_mask.sum() / whole_mask.sum().clamp(min=1))  # a mean over tokens
