"""The loss family beside k1.5's: each loss's gradient against its formula, computed by hand.

The free variables are the log-probs themselves (x_jt = log π_θ(y_t)), so ∂L/∂x_jt is read off each
formula directly; at θ = θ_i every ratio is 1.
"""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from k15.advantages import (
    correct_only_advantages,
    leave_one_out_advantages,
    mean_baseline_advantages,
    normalized_advantages,
)
from k15.losses import (
    CISPOLoss,
    DrGRPOLoss,
    GRPOLoss,
    GSPOLoss,
    KimiLoss,
    KLToInitial,
    PPOClipLoss,
    ReSTLoss,
    RLOOLoss,
    kl_estimates,
)

shapes = st.tuples(st.integers(1, 3), st.integers(2, 5), st.integers(1, 6))  # P, k, T


def case(seed: int, P: int, k: int, T: int, spread: float = 0.0):
    """log π_θi, log π_θ = log π_θi + spread · noise (a leaf), a mask with ≥ 1 token a row, rewards."""
    g = torch.Generator().manual_seed(seed)
    ref = -torch.rand(P * k, T, generator=g, dtype=torch.float64) * 3
    logp = (ref + spread * torch.randn(P * k, T, generator=g, dtype=torch.float64)).requires_grad_()
    mask = (torch.rand(P * k, T, generator=g) < 0.7).double()
    mask[:, 0] = 1
    rewards = torch.randint(0, 2, (P, k), generator=g).double() + 0.1 * torch.randn(P, k, generator=g).double()
    return logp, ref, mask, rewards


def gradient(loss, logp, ref, mask, rewards):
    a = loss.advantages(rewards)
    (g,) = torch.autograd.grad(loss(logp, ref, mask, a), logp)
    return g, a


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31))
def test_at_theta_i_every_loss_is_reinforce_with_its_advantages_and_averaging(shape, seed):
    """At θ = θ_i (every ratio 1) −∂L/∂x_jt = a_j · mask_jt / D, D the loss's averaging:
    Σ mask (token means), N · T_max (Dr. GRPO), N · |y_j| (GSPO: a mean of per-sequence means)."""
    P, k, T = shape
    logp, ref, mask, rewards = case(seed, P, k, T)
    logp = ref.clone().requires_grad_()
    n, tokens, lengths = P * k, mask.sum(), mask.sum(dim=1, keepdim=True)
    expected_denominator = {
        GRPOLoss(): tokens,
        PPOClipLoss(): tokens,
        RLOOLoss(): tokens,
        CISPOLoss(): tokens,
        ReSTLoss(threshold=0.5): tokens,
        DrGRPOLoss(max_tokens=7): n * 7,
        GSPOLoss(): n * lengths,
    }
    for loss, denominator in expected_denominator.items():
        g, a = gradient(loss, logp, ref, mask, rewards)
        torch.testing.assert_close(-g, a[:, None] * mask / denominator, msg=type(loss).__name__)


def test_each_loss_has_its_advantages():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 2.5]], dtype=torch.float64)
    assert DrGRPOLoss().advantages(rewards).tolist() == mean_baseline_advantages(rewards).tolist()
    assert RLOOLoss().advantages(rewards).tolist() == leave_one_out_advantages(rewards).tolist()
    for loss in (GRPOLoss(), PPOClipLoss(), GSPOLoss(), CISPOLoss()):
        assert loss.advantages(rewards).tolist() == normalized_advantages(rewards).tolist()
    assert PPOClipLoss(normalize_std=False).advantages(rewards).tolist() == mean_baseline_advantages(rewards).tolist()
    assert ReSTLoss().advantages(rewards).tolist() == [1, 0, 0, 1, 0, 0, 0, 1]


@settings(max_examples=60, deadline=None)
@given(k=st.integers(2, 6), seed=st.integers(0, 2**31))
def test_rloo_baseline_is_the_mean_of_the_other_samples(k, seed):
    rewards = torch.randn(3, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = [
        rewards[p, j] - torch.stack([rewards[p, i] for i in range(k) if i != j]).mean()
        for p, j in itertools.product(range(3), range(k))
    ]
    torch.testing.assert_close(leave_one_out_advantages(rewards), torch.stack(expected))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31))
def test_rest_has_no_gradient_from_wrong_samples(shape, seed):
    P, k, T = shape
    logp, ref, mask, rewards = case(seed, P, k, T, spread=0.5)
    g, a = gradient(ReSTLoss(threshold=0.5), logp, ref, mask, rewards)
    wrong = (rewards.flatten() < 0.5)[:, None].expand_as(g)
    assert (g[wrong] == 0).all()
    torch.testing.assert_close(-g, a[:, None] * mask / mask.sum())  # the SFT gradient on the rest


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31), eps_low=st.floats(0.05, 0.3), eps_high=st.floats(0.05, 0.5))
def test_ppo_clip_higher_drops_tokens_past_their_own_side_of_the_range(shape, seed, eps_low, eps_high):
    """−∂L/∂x_jt = ρ_jt a_j mask_jt / Σ mask, except 0 where the ratio is past 1 + ε_high with a_j > 0
    or below 1 − ε_low with a_j < 0 (the min picks the constant clipped term)."""
    P, k, T = shape
    logp, ref, mask, rewards = case(seed, P, k, T, spread=0.4)
    loss = PPOClipLoss(eps_low, eps_high)
    g, a = gradient(loss, logp, ref, mask, rewards)
    rho, a = torch.exp(logp.detach() - ref), a[:, None]
    clipped = ((a > 0) & (rho > 1 + eps_high)) | ((a < 0) & (rho < 1 - eps_low))
    torch.testing.assert_close(-g, torch.where(clipped, 0.0, rho * a) * mask / mask.sum())


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31))
def test_cispo_keeps_every_tokens_gradient_weighted_by_the_clipped_ratio(shape, seed):
    """−∂L/∂x_jt = clip(ρ_jt, 1 − ε_low, 1 + ε_high) a_j mask_jt / Σ mask: never 0 for a token PPO would clip."""
    P, k, T = shape
    logp, ref, mask, rewards = case(seed, P, k, T, spread=0.4)
    loss = CISPOLoss(eps_low=0.2, eps_high=0.28)
    g, a = gradient(loss, logp, ref, mask, rewards)
    weight = torch.exp(logp.detach() - ref).clamp(0.8, 1.28)
    torch.testing.assert_close(-g, weight * a[:, None] * mask / mask.sum())


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31))
def test_gspo_ratio_is_the_length_normalised_sequence_ratio(shape, seed):
    """s_j = exp(ℓ_j / |y_j|); inside the clip range −∂L/∂x_jt = s_j a_j mask_jt / (N |y_j|), outside it 0."""
    P, k, T = shape
    logp, ref, mask, rewards = case(seed, P, k, T, spread=0.001)
    loss = GSPOLoss(eps_low=3e-4, eps_high=4e-4)
    g, a = gradient(loss, logp, ref, mask, rewards)
    lengths = mask.sum(dim=1)
    s = torch.exp(((logp.detach() - ref) * mask).sum(dim=1) / lengths)
    clipped = ((a > 0) & (s > 1 + 4e-4)) | ((a < 0) & (s < 1 - 3e-4))
    per_sequence = torch.where(clipped, 0.0, s * a) / (P * k * lengths)
    torch.testing.assert_close(-g, per_sequence[:, None] * mask)


ALL = [GRPOLoss(), PPOClipLoss(), RLOOLoss(), CISPOLoss(), ReSTLoss(), DrGRPOLoss(), GSPOLoss(), KimiLoss()]


@pytest.mark.parametrize("loss", ALL, ids=lambda loss: type(loss).__name__)
def test_micro_batches_weighted_as_the_loss_averages_sum_to_the_whole_steps_loss(loss):
    """Σ over micro-batches of weight · L(micro-batch) = L(step): the update's gradient accumulation
    then equals one pass over the step's rows, whatever the token budget splits them into."""
    logp, ref, mask, rewards = case(3, 2, 4, 6, spread=0.3)
    a = loss.advantages(rewards)
    whole = loss(logp, ref, mask, a)
    parts = [torch.tensor([0, 3, 5]), torch.tensor([1, 2]), torch.tensor([4, 6, 7])]
    summed = sum(loss(logp[r], ref[r], mask[r], a[r]) * loss.micro_batch_weight(mask[r], mask) for r in parts)
    torch.testing.assert_close(summed, whole)


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda: PPOClipLoss(eps_high=0.0), "PPOClipLoss.eps_high"),
        (lambda: GSPOLoss(eps_low=float("nan")), "GSPOLoss.eps_low"),
        (lambda: DrGRPOLoss(max_tokens=0), "DrGRPOLoss.max_tokens"),
        (lambda: CISPOLoss(eps_high=-1), "CISPOLoss.eps_high"),
        (lambda: ReSTLoss(threshold=float("inf")), "ReSTLoss.threshold"),
        (lambda: KLToInitial(beta=0), "KLToInitial.beta"),
        (lambda: KLToInitial(estimator="k2"), "KLToInitial.estimator"),
    ],
)
def test_a_bad_setting_is_named(build, key):
    with pytest.raises(ValueError, match=key):
        build()


def test_rest_works_with_one_sample_per_prompt_and_the_others_need_a_group():
    assert not ReSTLoss.group_baseline
    assert all(cls.group_baseline for cls in (GRPOLoss, PPOClipLoss, RLOOLoss, CISPOLoss, DrGRPOLoss, GSPOLoss))
    torch.testing.assert_close(correct_only_advantages(torch.tensor([[0.9], [1.0]]), 1.0), torch.tensor([0.0, 1.0]))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31), beta=st.floats(0.01, 1.0))
def test_kl_penalty_gradients_are_the_estimators_derivatives(shape, seed, beta):
    """∂/∂x_jt of β·Σ mask·k / Σ mask, x = log π_θ, i = log π_init: k1 → β·mask/Σmask;
    k3 = e^(i−x) − (i−x) − 1 → β·(1 − e^(i−x))·mask/Σmask, which is 0 where π_θ = π_init (and k3 ≥ 0)."""
    P, k, T = shape
    logp, init, mask, _ = case(seed, P, k, T, spread=0.5)
    (g1,) = torch.autograd.grad(KLToInitial(beta, "k1")(logp, init, mask), logp)
    torch.testing.assert_close(g1, beta * mask / mask.sum())
    (g3,) = torch.autograd.grad(KLToInitial(beta, "k3")(logp, init, mask), logp)
    torch.testing.assert_close(g3, beta * (1 - torch.exp(init - logp.detach())) * mask / mask.sum())
    assert (kl_estimates(logp.detach(), init, "k3") >= 0).all()
    assert KLToInitial(beta)(init.clone().requires_grad_(), init, mask) == 0
