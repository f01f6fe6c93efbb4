"""The k1.5 surrogate against the paper's Eq. 3, computed by hand; advantages; GRPO."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from k15.advantages import mean_baseline_advantages, normalized_advantages
from k15.losses import GRPOLoss, KimiLoss, kimi_k15_loss, sequence_log_ratio

shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(2, 5))  # P, k, T, V


def random_case(seed: int, P: int, k: int, T: int, V: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(P * k, T, V, generator=g, dtype=torch.float64)  # θ: free logits per position
    ref_logits = logits + 0.3 * torch.randn(P * k, T, V, generator=g, dtype=torch.float64)  # θ_i
    tokens = torch.randint(0, V, (P * k, T), generator=g)
    mask = (torch.rand(P * k, T, generator=g) < 0.7).double()
    rewards = torch.randint(0, 2, (P, k), generator=g).double() + 0.1 * torch.randn(
        P, k, generator=g, dtype=torch.float64
    )
    return logits, ref_logits, tokens, mask, rewards


def logp_of(logits, tokens):
    return torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, tau=st.floats(0.05, 2.0), seed=st.integers(0, 2**31))
def test_gradient_equals_paper_eq3_by_hand(shape, tau, seed):
    """−∇L = 1/k Σ_j [a_j ∇log π_θ(y_j) − (τ/2) ∇ℓ_j²] = mean_j (a_j − τℓ_j) ∇log π_θ(y_j), and for
    free logits ∂log π(y_t)/∂θ_tv = 1[v = y_t] − softmax(θ_t)_v."""
    P, k, T, V = shape
    logits, ref_logits, tokens, mask, rewards = random_case(seed, *shape)
    theta = logits.clone().requires_grad_(True)
    ref_logp = logp_of(ref_logits, tokens)
    a = mean_baseline_advantages(rewards)
    kimi_k15_loss(logp_of(theta, tokens), ref_logp, mask, a, tau).backward()

    ell = ((logp_of(logits, tokens) - ref_logp) * mask).sum(1)  # ℓ_j
    dlogpi = (torch.nn.functional.one_hot(tokens, V) - torch.softmax(logits, -1)) * mask[..., None]
    expected = -((a - tau * ell)[:, None, None] * dlogpi) / (P * k)
    torch.testing.assert_close(theta.grad, expected, rtol=1e-9, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, tau=st.floats(0.05, 2.0), seed=st.integers(0, 2**31))
def test_at_theta_i_it_is_reinforce_with_mean_baseline(shape, tau, seed):
    logits, _, tokens, mask, rewards = random_case(seed, *shape)
    a = mean_baseline_advantages(rewards)
    theta = logits.clone().requires_grad_(True)
    kimi_k15_loss(logp_of(theta, tokens), logp_of(logits, tokens), mask, a, tau).backward()
    reinforce = logits.clone().requires_grad_(True)
    (-(a * (logp_of(reinforce, tokens) * mask).sum(1)).mean()).backward()
    torch.testing.assert_close(theta.grad, reinforce.grad, rtol=1e-9, atol=1e-12)


@given(
    rewards=st.lists(st.lists(st.floats(-2, 2), min_size=1, max_size=6), min_size=1, max_size=4).filter(
        lambda rows: len({len(r) for r in rows}) == 1
    )
)
def test_advantages_are_centred_per_prompt(rewards):
    r = torch.tensor(rewards, dtype=torch.float64)
    for advantages in (mean_baseline_advantages(r), normalized_advantages(r)):
        assert advantages.shape == (r.numel(),)
        torch.testing.assert_close(
            advantages.view_as(r).sum(1), torch.zeros(len(r), dtype=torch.float64), atol=1e-9, rtol=0
        )


def test_loss_is_a_j_squared_over_2tau_at_theta_i():
    a = torch.tensor([0.5, -0.5, 1.0])
    logp = torch.randn(3, 4)
    loss = KimiLoss(tau=0.25)(logp, logp, torch.ones(3, 4), a)
    assert loss.item() == (a**2).mean().item() / 0.5


def test_grpo_clips_the_ratio():
    logp_old = torch.zeros(2, 1)
    mask = torch.ones(2, 1)
    a = torch.tensor([1.0, -1.0])
    loss = GRPOLoss(clip_eps=0.2)
    # ratio e^1 ≫ 1.2: a positive advantage earns at most 1.2·a, a negative one pays the full ratio
    value = loss(torch.ones(2, 1), logp_old, mask, a)
    assert abs(value.item() - (-(1.2 - torch.e) / 2)) < 1e-6


def test_sequence_log_ratio_ignores_masked_tokens():
    logp = torch.tensor([[1.0, 2.0, 3.0]])
    assert sequence_log_ratio(logp, torch.zeros(1, 3), torch.tensor([[0.0, 1.0, 1.0]])).item() == 5.0
