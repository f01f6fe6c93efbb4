"""How far the rollout engine's π disagrees with the trainer's π_θi on the same sampled tokens.

Engines differ from the trainer in kernels, precision and (when sync lags) weights. For tokens y_t
sampled by the engine, with log r_t = log π_θi(y_t) − log π_engine(y_t):

    mean |log r_t|                         the per-token log-prob mismatch
    KL(π_engine ‖ π_θi) ≈ mean (r_t − 1 − log r_t)   (the k3 estimator: ≥ 0, unbiased)
"""

from __future__ import annotations

import torch
from torch import Tensor


def logprob_mismatch(engine_logp: Tensor, trainer_logp: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(mean |log r|, k3 KL estimate) over the tokens in ``mask``. All [N, T]."""
    log_r = trainer_logp - engine_logp
    tokens = mask.sum().clamp(min=1)
    k3 = (torch.expm1(log_r) - log_r).clamp(min=0)  # ≥ 0 exactly; clamp only removes rounding below 0
    return (log_r.abs() * mask).sum() / tokens, (k3 * mask).sum() / tokens
