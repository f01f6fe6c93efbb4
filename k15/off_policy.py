"""Off-policy correction: importance weights for the tokens a rollout engine sampled from another π.

Every loss in ``k15.losses`` assumes its tokens were sampled from π_θi, the policy at the start of
iteration i. They were sampled from a behaviour policy μ instead:

    * a partial rollout's earlier segments (k1.5 §2.6.2) from the engine's copy of an older π_θv, v < i;
    * even this iteration's segments from an engine that computes π_θi differently from the trainer
      (other kernels, bf16, …: the rollout/trainer mismatch, which grows as the policy sharpens).

The per-token importance ratio w_t = π_θi(y_t) / μ(y_t) = exp(log π_θi(y_t) − log μ(y_t)) makes the
expectation right again (log μ: the engine's log-prob of the token it sampled, stored with the
rollout). Unbounded, it is tamed in one of two ways:

    TIS     w̃_t = min(w_t, C)                   truncated importance sampling (Yao et al. 2025,
                                                 "Your efficient RL framework secretly brings you
                                                 off-policy RL training"): bounded variance, a little bias
    IcePop  w̃_t = w_t · 1[α ≤ w_t ≤ β]          (Ling team 2025, Ring-1T): a token whose two
                                                 probabilities disagree past the band gets no gradient

The weight multiplies each token's share of the gradient (``importance_weighted``), so every loss
takes it without a change: for a loss L(log π_θ(y_1), …, log π_θ(y_T)),

    ∇L = Σ_t ∂L/∂log π_θ(y_t) · ∇log π_θ(y_t)   becomes   Σ_t w̃_t · ∂L/∂log π_θ(y_t) · ∇log π_θ(y_t),

which for the token-level losses (PPO-clip, GRPO, CISPO, ReST, …) is exactly the gradient of the
weighted objective Σ_t w̃_t ℓ_t, the form TIS and IcePop are written in.
"""

from __future__ import annotations

import math

from torch import Tensor


def importance_weighted(logp: Tensor, weights: Tensor) -> Tensor:
    """log π_θ with each token's gradient scaled by its weight: the value is ``logp`` exactly,
    the gradient w_t · ∇log π_θ(y_t) (``weights`` carry no gradient)."""
    frozen = logp.detach()
    return frozen + (logp - frozen) * weights.detach()


def truncated_weights(log_ratio: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """TIS: (w̃ = min(exp(log_ratio), C), whether w was truncated). exp of min(·, log C): never overflows."""
    clipped = log_ratio > math.log(cap)
    return log_ratio.clamp(max=math.log(cap)).exp(), clipped


def masked_weights(log_ratio: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    """IcePop: (w̃ = w inside [α, β], 0 outside; whether w was outside)."""
    outside = (log_ratio < math.log(low)) | (log_ratio > math.log(high))
    return log_ratio.clamp(math.log(low), math.log(high)).exp().masked_fill(outside, 0.0), outside


class OffPolicyCorrection:
    """Per-token weights w̃ from the trainer's log π_θi and the engine's log μ of the sampled tokens."""

    def __call__(self, trainer_logp: Tensor, engine_logp: Tensor) -> tuple[Tensor, Tensor]:
        """→ (w̃, whether each token's ratio was truncated or masked), each shaped like the inputs."""
        raise NotImplementedError


class TIS(OffPolicyCorrection):
    """Truncated importance sampling: w̃_t = min(π_θi(y_t) / μ(y_t), C).

    Args:
        cap: C, the largest weight (2 in Yao et al.; larger: less bias, more variance).
    """

    def __init__(self, cap: float = 2.0):
        if not (math.isfinite(cap) and cap >= 1):
            raise ValueError(f"TIS.cap must be a finite number ≥ 1, got {cap}")
        self.cap = cap

    def __call__(self, trainer_logp, engine_logp):
        return truncated_weights(trainer_logp - engine_logp, self.cap)


class IcePop(OffPolicyCorrection):
    """Masked importance sampling: w̃_t = w_t inside [α, β], 0 (no gradient) outside.

    Args:
        low, high: α ≤ 1 ≤ β, the band (Ring-1T: 0.5 and 5).
    """

    def __init__(self, low: float = 0.5, high: float = 5.0):
        if not (0 < low <= 1 <= high and math.isfinite(high)):
            raise ValueError(f"IcePop needs 0 < low ≤ 1 ≤ high < inf, got low={low}, high={high}")
        self.low, self.high = low, high

    def __call__(self, trainer_logp, engine_logp):
        return masked_weights(trainer_logp - engine_logp, self.low, self.high)
