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


TINY_FORMAT = "[0-9+=,]*A:[0-9]+"


@given(st.lists(st.text(alphabet="0123456789+=,:A", max_size=20), min_size=1, max_size=8))
def test_format_reward_is_one_exactly_for_full_matches(completions):
    import re

    from k15.reward.shaping import format_reward

    out = format_reward(completions, TINY_FORMAT)
    assert out.tolist() == [float(re.fullmatch(TINY_FORMAT, c) is not None) for c in completions]


@given(
    st.integers(1, 4).flatmap(lambda k: st.tuples(st.just(k), st.lists(st.sampled_from(["1+2+0=3,A:3", "A:4", "junk", "1+1"]), min_size=k, max_size=3 * k))),
    st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.integers(0, 3),
)
def test_total_reward_is_the_weighted_sum_of_its_parts(case, length_weight, repeat_penalty, format_weight, iteration):
    from k15.reward import RewardModule

    k, texts = case
    texts = texts[: len(texts) // k * k]
    if not texts:
        return
    reasons = ["repeat" if i % 3 == 0 else "stop" for i in range(len(texts))]
    reward = RewardModule(length_penalty_weight=length_weight, length_penalty_warmup_iterations=2, repeat_penalty=repeat_penalty,
                          format_pattern=TINY_FORMAT, format_weight=format_weight)
    answers = ["3"] * len(texts)
    r = reward(texts, answers, torch.tensor([len(t) for t in texts]), reasons, k, iteration)
    repeated = torch.tensor([reason == "repeat" for reason in reasons], dtype=torch.float32).view(-1, k)
    w = length_weight if iteration >= 2 else 0.0
    expected = r.correct + w * r.length - repeat_penalty * repeated + format_weight * r.format
    torch.testing.assert_close(r.total, expected)
    assert r.correct.flatten().tolist() == [float(t.endswith("A:3")) for t in texts]
    assert r.format.flatten().tolist() == [float(t in ("1+2+0=3,A:3", "A:4")) for t in texts]
