"""Off-policy correction (k15/off_policy.py): the weights against their formulas, every loss's
gradient scaled token by token, and the update against a hand-computed weighted REINFORCE step."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_loss_family import case, shapes
from test_update import ROLLOUT_ARGS, TAU, assert_all_close, deltas, rollout_of, run_update

from k15.advantages import mean_baseline_advantages
from k15.logprobs import token_logprobs
from k15.losses import CISPOLoss, DrGRPOLoss, GRPOLoss, GSPOLoss, KimiLoss, PPOClipLoss, ReSTLoss, RLOOLoss
from k15.models import Pretrained
from k15.off_policy import TIS, IcePop, importance_weighted, masked_weights, truncated_weights
from k15.policy import PolicyModule
from k15.reference import ReferenceModule
from k15.rollout import HFEngine, RolloutCallback

log_ratios = st.lists(st.floats(-800, 800), min_size=1, max_size=20).map(lambda v: torch.tensor(v, dtype=torch.float64))


@settings(max_examples=60, deadline=None)
@given(log_ratio=log_ratios, cap=st.floats(1.0, 10.0))
def test_tis_weight_is_the_ratio_truncated_at_the_cap(log_ratio, cap):
    w, clipped = truncated_weights(log_ratio, cap)
    ratio = log_ratio.exp()  # inf past e^709: the weight must not be
    assert torch.isfinite(w).all() and (w <= cap * (1 + 1e-12)).all()
    torch.testing.assert_close(w[~clipped], ratio[~clipped])
    torch.testing.assert_close(w[clipped], torch.full_like(w[clipped], cap))
    assert torch.equal(clipped, log_ratio > math.log(cap))


@settings(max_examples=60, deadline=None)
@given(log_ratio=log_ratios, low=st.floats(0.05, 1.0), high=st.floats(1.0, 20.0))
def test_icepop_weight_is_the_ratio_inside_the_band_and_zero_outside(log_ratio, low, high):
    w, outside = masked_weights(log_ratio, low, high)
    ratio = log_ratio.exp()
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w[~outside], ratio[~outside])
    assert (w[outside] == 0).all()
    assert torch.equal(outside, (log_ratio < math.log(low)) | (log_ratio > math.log(high)))


LOSSES = [
    KimiLoss(TAU),
    GRPOLoss(),
    PPOClipLoss(),
    DrGRPOLoss(max_tokens=7),
    RLOOLoss(),
    GSPOLoss(eps_low=0.05, eps_high=0.05),
    CISPOLoss(),
    ReSTLoss(threshold=0.5),
]


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31), spread=st.sampled_from([0.0, 0.3]))
def test_every_loss_keeps_its_value_and_scales_each_tokens_gradient_by_its_weight(shape, seed, spread):
    """∂L/∂x_jt with x = log π_θ weighted becomes w_jt · ∂L/∂x_jt, at θ_i and off it, for all 8 losses."""
    logp, ref, mask, rewards = case(seed, *shape, spread=spread)
    weights = torch.rand(logp.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3
    for loss in LOSSES:
        a = loss.advantages(rewards)
        plain = loss(logp, ref, mask, a)
        weighted = loss(importance_weighted(logp, weights), ref, mask, a)
        assert torch.equal(plain, weighted), type(loss).__name__
        (g_plain,) = torch.autograd.grad(plain, logp)
        (g_weighted,) = torch.autograd.grad(weighted, logp)
        torch.testing.assert_close(g_weighted, weights * g_plain, msg=type(loss).__name__)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31), cap=st.floats(1.0, 3.0))
def test_ppo_clip_with_tis_is_the_gradient_of_the_truncated_objective(shape, seed, cap):
    """TIS as Yao et al. write it for PPO: L = −Σ_jt mask · min(w_t, C) · min(ρ a, clip(ρ) a) / Σ mask,
    the weight computed from π_θi and the engine's μ, held fixed."""
    logp, ref, mask, rewards = case(seed, *shape, spread=0.3)
    engine = ref + 0.5 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=ref.dtype)
    loss = PPOClipLoss(eps_low=0.2, eps_high=0.28)
    a = loss.advantages(rewards)
    w, _ = TIS(cap)(ref, engine)
    (ours,) = torch.autograd.grad(loss(importance_weighted(logp, w), ref, mask, a), logp)
    rho = (logp - ref).exp()
    surrogate = torch.minimum(rho * a[:, None], rho.clamp(0.8, 1.28) * a[:, None])
    by_hand = -(torch.minimum((ref - engine).exp(), torch.tensor(cap)) * surrogate * mask).sum() / mask.sum()
    (expected,) = torch.autograd.grad(by_hand, logp)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("correction", [TIS(cap=1.5), IcePop(low=0.8, high=1.25)], ids=["tis", "icepop"])
def test_the_update_takes_the_weighted_reinforce_step_and_reports_the_weights(tiny_dir, correction):
    """One full SGD step at θ = θ_i under an engine whose log μ differs from π_θi's: the step is
    −lr · ∇[−(1/N) Σ_j a_j Σ_t w̃_jt log π_θ(y_jt)] (Eq. 3 with ℓ = 0, each token weighted), and the
    logged mean weight and clipped share are those of the trained tokens."""
    policy = Pretrained(str(tiny_dir)).model().double().train()
    rollout = rollout_of(*ROLLOUT_ARGS)
    with torch.no_grad():
        trainer_logp = token_logprobs(policy, rollout.input_ids, rollout.attention_mask).double()
    noise = torch.randn(trainer_logp.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rollout.engine_logprobs = (trainer_logp + 0.4 * noise) * rollout.loss_mask
    w, clipped = correction(trainer_logp, rollout.engine_logprobs)
    w, clipped = w * rollout.loss_mask, clipped * rollout.loss_mask
    assert 0 < clipped.sum() < rollout.loss_mask.sum()  # both kinds of token are in the test

    expected_model = copy.deepcopy(policy)
    a = mean_baseline_advantages(rollout.rewards.total)
    weighted = (token_logprobs(expected_model, rollout.input_ids, rollout.attention_mask).double() * w).sum(1)
    (-(a * weighted).mean()).backward()
    torch.optim.SGD(expected_model.parameters(), lr=0.1).step()

    before = copy.deepcopy(policy)
    stats = run_update(policy, rollout, torch.optim.SGD(policy.parameters(), lr=0.1), correction=correction)
    assert_all_close(deltas(before, policy), deltas(before, expected_model), rtol=1e-6, atol=1e-10)
    tokens = rollout.loss_mask.sum()
    torch.testing.assert_close(stats.is_weight_mean, w.sum() / tokens)
    torch.testing.assert_close(stats.is_clipped_share, clipped.sum() / tokens)


def test_without_engine_log_probs_the_correction_says_what_is_missing(tiny_dir):
    policy = Pretrained(str(tiny_dir)).model().double().train()
    with pytest.raises(ValueError, match="model.off_policy needs the engine's log-prob"):
        run_update(policy, rollout_of(*ROLLOUT_ARGS), torch.optim.SGD(policy.parameters(), lr=0.1), correction=TIS())


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: TIS(cap=0.5), "TIS.cap"),
        (lambda: IcePop(low=1.5, high=2.0), "IcePop needs"),
        (lambda: IcePop(low=0.5, high=0.9), "IcePop needs"),
    ],
)
def test_bad_settings_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_the_initial_reference_is_refused_because_it_does_not_score_pi_theta_i(tiny_dir):
    with pytest.raises(ValueError, match="model.off_policy .* mode: iteration"):
        PolicyModule(
            Pretrained(str(tiny_dir)),
            RolloutCallback(HFEngine(), samples_per_prompt=2, max_new_tokens=8),
            reference=ReferenceModule(mode="initial"),
            off_policy=TIS(),
        )
