"""Policy losses: pure tensor functions, and the small classes YAML selects them by.

Notation (one RL iteration i, P prompts × k samples = N trajectories, T token positions):
    logp      [N, T]  log π_θ(y_t | x, y_<t), the policy being updated
    ref_logp  [N, T]  log π_θi(y_t | x, y_<t), the policy at the start of the iteration (fixed;
                      the "old" policy of PPO-style losses)
    mask      [N, T]  1 on the tokens the loss sees (the completion), 0 elsewhere
    rewards   [P, k]  r_j per trajectory
    a         [N]     advantages (``k15.advantages``), flattened prompt-major (trajectory n belongs to prompt n // k)
    ρ_jt = π_θ(y_t)/π_θi(y_t) = exp(logp − ref_logp), the per-token probability ratio; |y_j| = Σ_t mask_jt

The family (all equal REINFORCE with their advantages at θ = θ_i, up to how tokens are averaged):
    KimiLoss   k1.5 mirror descent, a mean over trajectories     GRPOLoss   PPO-clip, a mean over tokens
    DrGRPOLoss PPO-clip, a sum over tokens / constant             RLOOLoss   leave-one-out baseline
    PPOClipLoss token-level, separate clip ranges (clip-higher)   GSPOLoss   sequence-level ratio
    CISPOLoss  clipped IS weight, stop-gradient                   ReSTLoss   SFT on the correct samples

The registry is the class hierarchy: every ``PolicyLoss`` subclass imported here can be named in
YAML (``loss: {class_path: GRPOLoss}``), so swapping the loss is one key.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from k15.advantages import (
    correct_only_advantages,
    leave_one_out_advantages,
    mean_baseline_advantages,
    normalized_advantages,
)


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


def clipped_surrogate(rho: Tensor, advantages: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """PPO's per-token (or per-sequence) objective min(ρ a, clip(ρ, 1−ε_low, 1+ε_high) a): no gradient
    once the ratio has moved past the clip range in the direction the advantage pushes it."""
    a = advantages if rho.dim() == 1 else advantages[:, None]
    return torch.minimum(rho * a, rho.clamp(1 - eps_low, 1 + eps_high) * a)


def ppo_clip_loss(
    logp: Tensor, old_logp: Tensor, mask: Tensor, advantages: Tensor, eps_low: float, eps_high: float | None = None
) -> Tensor:
    """PPO/GRPO clipped surrogate, averaged over all loss tokens of the batch (DAPO's token level):

    L = −Σ_{j,t} mask_jt · min(ρ_jt a_j, clip(ρ_jt, 1−ε_low, 1+ε_high) a_j) / Σ mask
    (ε_high > ε_low: DAPO's clip-higher, room for unlikely tokens to grow; None: ε_high = ε_low)
    """
    rho = torch.exp(logp - old_logp)
    per_token = clipped_surrogate(rho, advantages, eps_low, eps_low if eps_high is None else eps_high)
    return -(per_token * mask).sum() / mask.sum().clamp(min=1)


def dr_grpo_loss(
    logp: Tensor, old_logp: Tensor, mask: Tensor, advantages: Tensor, clip_eps: float, max_tokens: int
) -> Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): GRPO without its two biases,
    advantages a_j = r_j − r̄ (no std division) and a constant in place of each response's length:

    L = −1/(N · T_max) · Σ_{j,t} mask_jt · min(ρ_jt a_j, clip(ρ_jt, 1−ε, 1+ε) a_j)

    so a long wrong answer is not penalised less per token than a short one."""
    rho = torch.exp(logp - old_logp)
    per_token = clipped_surrogate(rho, advantages, clip_eps, clip_eps)
    return -(per_token * mask).sum() / (len(logp) * max_tokens)


def gspo_loss(
    logp: Tensor, old_logp: Tensor, mask: Tensor, advantages: Tensor, eps_low: float, eps_high: float
) -> Tensor:
    """GSPO (Zheng et al. 2025): one importance ratio per sequence, the length-normalised likelihood ratio

    s_j = exp(Σ_t mask_jt (log π_θ − log π_θi) / |y_j|),   L = −mean_j min(s_j a_j, clip(s_j, 1−ε_low, 1+ε_high) a_j)

    (ε ~ 3e-4–4e-4: s_j is a geometric mean of per-token ratios, far tighter than any one of them)."""
    lengths = mask.sum(dim=1).clamp(min=1)
    s = torch.exp(sequence_log_ratio(logp, old_logp, mask) / lengths)
    return -clipped_surrogate(s, advantages, eps_low, eps_high).mean()


def cispo_loss(
    logp: Tensor, old_logp: Tensor, mask: Tensor, advantages: Tensor, eps_low: float, eps_high: float
) -> Tensor:
    """CISPO (MiniMax-M1, 2025): clip the importance weight, not the update, so that every token keeps
    its gradient (PPO drops the rare "wait"/"recheck" tokens whose ratio moves first):

    L = −Σ_{j,t} mask_jt · sg(clip(ρ_jt, 1−ε_low, 1+ε_high)) · a_j · log π_θ(y_t) / Σ mask,   sg: stop-gradient
    """
    weight = torch.exp(logp - old_logp).clamp(1 - eps_low, 1 + eps_high).detach()
    return -(weight * advantages[:, None] * logp * mask).sum() / mask.sum().clamp(min=1)


def rest_loss(logp: Tensor, mask: Tensor, advantages: Tensor) -> Tensor:
    """ReST / rejection-sampling fine-tuning: the SFT loss on the samples with a_j = 1 (the correct
    ones), averaged over all loss tokens: L = −Σ_{j,t} mask_jt a_j log π_θ(y_t) / Σ mask. With
    a_j ∈ {0, 1} a wrong sample contributes nothing: no negative gradient (the k1.5 report's Fig. 10)."""
    return -(advantages[:, None] * logp * mask).sum() / mask.sum().clamp(min=1)


def kl_estimates(logp: Tensor, init_logp: Tensor, estimator: str) -> Tensor:
    """Per-token estimates of KL(π_θ ‖ π_init) from tokens sampled by π_θ (Schulman's k1, k3):

    k1 = log π_θ − log π_init            (unbiased, can be negative)
    k3 = π_init/π_θ − log(π_init/π_θ) − 1  (unbiased, ≥ 0, lower variance; DeepSeekMath's GRPO term)
    """
    log_r = init_logp - logp
    if estimator == "k1":
        return -log_r
    return torch.expm1(log_r) - log_r


def kl_penalty(logp: Tensor, init_logp: Tensor, mask: Tensor, beta: float, estimator: str) -> Tensor:
    """β · Σ_{j,t} mask_jt k_jt / Σ mask: the KL to the initial policy, a mean over loss tokens, added to any loss."""
    return beta * (kl_estimates(logp, init_logp, estimator) * mask).sum() / mask.sum().clamp(min=1)


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
        positive("KimiLoss", tau=tau)  # it divides the loss
        self.tau = tau

    def advantages(self, rewards: Tensor) -> Tensor:
        return mean_baseline_advantages(rewards)

    def __call__(self, logp, ref_logp, mask, advantages):
        return kimi_k15_loss(logp, ref_logp, mask, advantages, self.tau)


class TokenMeanLoss(PolicyLoss):
    """A loss averaged over the tokens of a step: a micro-batch weighs tokens_part / tokens_whole."""

    def micro_batch_weight(self, part_mask, whole_mask):
        return float(part_mask.sum() / whole_mask.sum().clamp(min=1))


def positive(name: str, **values: float | None) -> None:
    """Raise naming ``name.key`` unless every value given is a finite number > 0."""
    for key, value in values.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}.{key} must be a finite number > 0, got {value}")


class GRPOLoss(TokenMeanLoss):
    """GRPO (DeepSeekMath): group-normalised advantages, PPO clipping against π_θi, no KL term.

    Args:
        clip_eps: ε, the clipping range of the probability ratio.
    """

    def __init__(self, clip_eps: float = 0.2):
        positive("GRPOLoss", clip_eps=clip_eps)
        self.clip_eps = clip_eps

    def advantages(self, rewards: Tensor) -> Tensor:
        return normalized_advantages(rewards)

    def __call__(self, logp, ref_logp, mask, advantages):
        return ppo_clip_loss(logp, ref_logp, mask, advantages, self.clip_eps)


class PPOClipLoss(TokenMeanLoss):
    """Token-level PPO-clip with separate clip ranges (DAPO's clip-higher: ε_high = 0.28 > ε_low = 0.2).

    Args:
        eps_low, eps_high: the ratio's clip range [1 − ε_low, 1 + ε_high].
        normalize_std: advantages (r − r̄) / std (GRPO, DAPO) or r − r̄.
    """

    def __init__(self, eps_low: float = 0.2, eps_high: float = 0.28, normalize_std: bool = True):
        positive("PPOClipLoss", eps_low=eps_low, eps_high=eps_high)
        self.eps_low, self.eps_high, self.normalize_std = eps_low, eps_high, normalize_std

    def advantages(self, rewards: Tensor) -> Tensor:
        return normalized_advantages(rewards) if self.normalize_std else mean_baseline_advantages(rewards)

    def __call__(self, logp, ref_logp, mask, advantages):
        return ppo_clip_loss(logp, ref_logp, mask, advantages, self.eps_low, self.eps_high)


class DrGRPOLoss(PolicyLoss):
    """Dr. GRPO: a_j = r_j − r̄, the clipped surrogate summed over tokens and divided by N · T_max.

    Args:
        clip_eps: ε, the ratio's clip range.
        max_tokens: T_max, the constant every response's token sum is divided by (the rollout's
            max_new_tokens is the natural choice; it only scales the step).
    """

    def __init__(self, clip_eps: float = 0.2, max_tokens: int = 1024):
        positive("DrGRPOLoss", clip_eps=clip_eps, max_tokens=max_tokens)
        self.clip_eps, self.max_tokens = clip_eps, max_tokens

    def advantages(self, rewards: Tensor) -> Tensor:
        return mean_baseline_advantages(rewards)

    def __call__(self, logp, ref_logp, mask, advantages):
        return dr_grpo_loss(logp, ref_logp, mask, advantages, self.clip_eps, self.max_tokens)


class RLOOLoss(TokenMeanLoss):
    """RLOO (Ahmadian et al. 2024): the leave-one-out baseline a_j = r_j − mean_{i≠j} r_i, with
    PPO's clipped ratio for the steps after the first (the first, at θ = θ_i, is REINFORCE).

    Args:
        clip_eps: ε, the ratio's clip range.
    """

    def __init__(self, clip_eps: float = 0.2):
        positive("RLOOLoss", clip_eps=clip_eps)
        self.clip_eps = clip_eps

    def advantages(self, rewards: Tensor) -> Tensor:
        return leave_one_out_advantages(rewards)

    def __call__(self, logp, ref_logp, mask, advantages):
        return ppo_clip_loss(logp, ref_logp, mask, advantages, self.clip_eps)


class GSPOLoss(PolicyLoss):
    """GSPO: a clipped sequence-level ratio, group-normalised advantages, a mean over trajectories.

    Args:
        eps_low, eps_high: the clip range of s_j (the paper's 3e-4 and 4e-4).
    """

    def __init__(self, eps_low: float = 3e-4, eps_high: float = 4e-4):
        positive("GSPOLoss", eps_low=eps_low, eps_high=eps_high)
        self.eps_low, self.eps_high = eps_low, eps_high

    def advantages(self, rewards: Tensor) -> Tensor:
        return normalized_advantages(rewards)

    def __call__(self, logp, ref_logp, mask, advantages):
        return gspo_loss(logp, ref_logp, mask, advantages, self.eps_low, self.eps_high)


class CISPOLoss(TokenMeanLoss):
    """CISPO: REINFORCE weighted by the clipped, stop-gradient importance ratio, over every token.

    Args:
        eps_low: 1 − ε_low bounds the weight below (1.0: no lower bound, as MiniMax-M1 ran it).
        eps_high: 1 + ε_high bounds it above (the one MiniMax tuned).
    """

    def __init__(self, eps_low: float = 1.0, eps_high: float = 0.28):
        positive("CISPOLoss", eps_low=eps_low, eps_high=eps_high)
        self.eps_low, self.eps_high = eps_low, eps_high

    def advantages(self, rewards: Tensor) -> Tensor:
        return normalized_advantages(rewards)

    def __call__(self, logp, ref_logp, mask, advantages):
        return cispo_loss(logp, ref_logp, mask, advantages, self.eps_low, self.eps_high)


class ReSTLoss(TokenMeanLoss):
    """ReST: supervised fine-tuning on the samples whose reward reaches ``threshold`` (the k1.5
    report's baseline without negative gradients). Works with k = 1.

    Args:
        threshold: a sample with r_j ≥ threshold is imitated (1.0: correct, with no shaping).
    """

    group_baseline = False

    def __init__(self, threshold: float = 1.0):
        if not math.isfinite(threshold):
            raise ValueError(f"ReSTLoss.threshold must be a finite number, got {threshold}")
        self.threshold = threshold

    def advantages(self, rewards: Tensor) -> Tensor:
        return correct_only_advantages(rewards, self.threshold)

    def __call__(self, logp, ref_logp, mask, advantages):
        return rest_loss(logp, mask, advantages)


class KLToInitial:
    """An optional penalty β·KL(π_θ ‖ π_init) beside any loss, π_init the policy as training began
    (a frozen copy: one more model in memory; π_θi needs none).

    Args:
        beta: β, the penalty's weight.
        estimator: ``k3`` (≥ 0, GRPO's) or ``k1`` (the plain log-ratio).
    """

    def __init__(self, beta: float = 0.04, estimator: Literal["k1", "k3"] = "k3"):
        positive("KLToInitial", beta=beta)
        if estimator not in ("k1", "k3"):
            raise ValueError(f"KLToInitial.estimator must be k1 or k3, got {estimator!r}")
        self.beta, self.estimator = beta, estimator

    def __call__(self, logp: Tensor, init_logp: Tensor, mask: Tensor) -> Tensor:
        return kl_penalty(logp, init_logp, mask, self.beta, self.estimator)

    def micro_batch_weight(self, part_mask: Tensor, whole_mask: Tensor) -> float:
        return float(part_mask.sum() / whole_mask.sum().clamp(min=1))  # a mean over tokens
