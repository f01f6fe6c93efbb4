"""The k1.5 length penalty (paper §2.3.3) against its formula."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from k15.reward.shaping import length_reward

groups = st.integers(1, 8).flatmap(
    lambda k: st.lists(st.tuples(st.lists(st.integers(1, 500), min_size=k, max_size=k), st.lists(st.booleans(), min_size=k, max_size=k)), min_size=1, max_size=4)
)


@given(groups)
def test_matches_formula_row_by_row(rows):
    lengths = torch.tensor([r[0] for r in rows])
    correct = torch.tensor([r[1] for r in rows])
    out = length_reward(lengths, correct)
    for (lens, oks), got in zip(rows, out.tolist()):
        lo, hi = min(lens), max(lens)
        for length, ok, value in zip(lens, oks, got):
            lam = 0.0 if hi == lo else 0.5 - (length - lo) / (hi - lo)
            assert abs(value - (lam if ok else min(0.0, lam))) < 1e-6


@given(groups)
def test_bounds_and_wrong_answers_never_gain(rows):
    lengths = torch.tensor([r[0] for r in rows])
    correct = torch.tensor([r[1] for r in rows])
    out = length_reward(lengths, correct)
    assert (out >= -0.5 - 1e-6).all() and (out <= 0.5 + 1e-6).all()
    assert (out[~correct] <= 0).all()


@given(st.integers(1, 8), st.integers(1, 500), st.lists(st.booleans(), min_size=8, max_size=8))
def test_equal_lengths_give_zero(k, length, oks):
    out = length_reward(torch.full((1, k), length), torch.tensor([oks[:k]]))
    assert (out == 0).all()


def test_shortest_correct_gets_half_and_longest_minus_half():
    out = length_reward(torch.tensor([[10, 20, 30]]), torch.tensor([[True, True, False]]))
    assert out.tolist() == [[0.5, 0.0, -0.5]]
