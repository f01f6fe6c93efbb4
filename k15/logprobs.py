"""Per-token log-probabilities of sequences under a causal LM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def token_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, **model_inputs: Tensor) -> Tensor:
    """log π(y_t | y_<t) at every position t ≥ 1, and 0 at t = 0 (nothing predicts it). [N, T] → [N, T].

    Aligned with ``input_ids`` so a [N, T] loss mask applies directly. ``model_inputs`` are the
    rows' extra forward inputs (a vision-language model's ``pixel_values``).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **model_inputs).logits[:, :-1].float()
    targets = input_ids[:, 1:, None]
    logp = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return F.pad(logp, (1, 0))
