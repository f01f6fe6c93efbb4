import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from k15.rollout.consistency import logprob_mismatch


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 4), t=st.integers(1, 6), scale=st.floats(0.0, 3.0))
@example(seed=1, n=1, t=3, scale=2.220446049250313e-16)  # once rounded to a negative KL
def test_kl_estimate_is_nonnegative_and_zero_only_when_equal(seed, n, t, scale):
    g = torch.Generator().manual_seed(seed)
    engine = -torch.rand(n, t, generator=g, dtype=torch.float64) * 5
    trainer = engine + scale * torch.randn(n, t, generator=g, dtype=torch.float64)
    mask = torch.ones(n, t, dtype=torch.float64)
    abs_diff, kl = logprob_mismatch(engine, trainer, mask)
    assert kl >= 0 and abs_diff >= 0
    torch.testing.assert_close(abs_diff, (trainer - engine).abs().mean())
    same_abs, same_kl = logprob_mismatch(engine, engine, mask)
    assert same_abs == 0 and same_kl == 0


def test_masked_tokens_do_not_count():
    engine = torch.tensor([[-1.0, -1.0]])
    trainer = torch.tensor([[-1.0, -9.0]])
    abs_diff, kl = logprob_mismatch(engine, trainer, torch.tensor([[1.0, 0.0]]))
    assert abs_diff == 0 and kl == 0
