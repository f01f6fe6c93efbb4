"""k15's losses against TRL's ``GRPOTrainer._compute_loss`` on identical inputs: loss and gradient.

TRL is a test dependency (the dev extra, pinned): its method runs as it is; only what it reads from
the trainer is given (``TRLSettings``), and the policy forward it would run returns the test's
log-probs, so both sides differentiate the same leaf tensor.

    k15                                         TRL loss_type
    GRPOLoss (token mean, clip ε)               bnpo
    PPOClipLoss (ε_low, ε_high)                 dapo (normalised by the batch's tokens)
    DrGRPOLoss (T_max)                          dr_grpo (max_completion_length)
    CISPOLoss (ε_low = 1, ε_high)               cispo (epsilon_high = 1 + ε_high: TRL's is the bound itself)
    GSPOLoss (ε_low, ε_high)                    grpo at importance_sampling_level "sequence"
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl.trainer import grpo_trainer as trl_grpo

from k15.losses import CISPOLoss, DrGRPOLoss, GRPOLoss, GSPOLoss, PPOClipLoss

N, T = 6, 7


class TRLSettings:
    """The attributes ``GRPOTrainer._compute_loss`` reads, for one process and no accumulation."""

    def __init__(self, logp, loss_type, eps_low, eps_high, level="token", max_completion_length=None):
        self.logp = logp
        self.loss_type, self.epsilon_low, self.epsilon_high = loss_type, eps_low, eps_high
        self.importance_sampling_level, self.max_completion_length = level, max_completion_length
        self.beta, self.top_entropy_quantile, self.off_policy_mask_threshold = 0.0, 1.0, None
        self.use_vllm, self.aux_loss_enabled, self._entropy_bonus_enabled = False, False, False
        self.current_gradient_accumulation_steps = 1
        self.args = SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1)
        self.model = SimpleNamespace(training=True)
        self.accelerator = SimpleNamespace(
            gather=lambda t: t, reduce=lambda t, reduction: t, num_processes=1, sync_gradients=True
        )
        self._metrics = defaultdict(lambda: defaultdict(list))

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **_):
        return self.logp, torch.zeros_like(self.logp), None


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(N, T, generator=g, dtype=torch.float64) * 3
    logp = (old + 0.3 * torch.randn(N, T, generator=g, dtype=torch.float64)).requires_grad_()
    mask = (torch.rand(N, T, generator=g) < 0.7).long()
    mask[:, 0] = 1
    advantages = torch.randn(N, generator=g, dtype=torch.float64)
    return logp, old, mask, advantages


def trl_loss_and_gradient(settings: TRLSettings, old, mask, advantages):
    batch = {
        "prompt_ids": torch.zeros((N, 1), dtype=torch.long),
        "prompt_mask": torch.ones((N, 1), dtype=torch.long),
        "completion_ids": torch.zeros((N, T), dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "num_items_in_batch": mask.sum(),
    }
    loss = trl_grpo.GRPOTrainer._compute_loss(settings, None, batch)
    return loss, torch.autograd.grad(loss, settings.logp)[0]


@pytest.mark.parametrize(
    "k15_loss, trl",
    [
        (GRPOLoss(clip_eps=0.2), dict(loss_type="bnpo", eps_low=0.2, eps_high=0.2)),
        (PPOClipLoss(eps_low=0.2, eps_high=0.28), dict(loss_type="dapo", eps_low=0.2, eps_high=0.28)),
        (
            DrGRPOLoss(clip_eps=0.2, max_tokens=16),
            dict(loss_type="dr_grpo", eps_low=0.2, eps_high=0.2, max_completion_length=16),
        ),
        (CISPOLoss(eps_low=1.0, eps_high=0.28), dict(loss_type="cispo", eps_low=0.2, eps_high=1.28)),
        (GSPOLoss(eps_low=0.05, eps_high=0.08), dict(loss_type="grpo", eps_low=0.05, eps_high=0.08, level="sequence")),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, dict) else v["loss_type"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k15_loss_and_gradient_equal_trls_on_identical_inputs(k15_loss, trl, seed):
    logp, old, mask, advantages = inputs(seed)
    theirs, their_gradient = trl_loss_and_gradient(TRLSettings(logp, **trl), old, mask, advantages)
    ours = k15_loss(logp, old, mask.double(), advantages)
    (our_gradient,) = torch.autograd.grad(ours, logp)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(our_gradient, their_gradient)
    assert our_gradient.abs().sum() > 0
