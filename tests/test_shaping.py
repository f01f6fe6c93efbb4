"""The k1.5 length penalty (paper §2.3.3) against its formula."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from k15.reward.shaping import length_reward, repeated_ngram_share

groups = st.integers(1, 8).flatmap(
    lambda k: st.lists(
        st.tuples(
            st.lists(st.integers(1, 500), min_size=k, max_size=k), st.lists(st.booleans(), min_size=k, max_size=k)
        ),
        min_size=1,
        max_size=4,
    )
)


@given(groups)
def test_matches_formula_row_by_row(rows):
    lengths = torch.tensor([r[0] for r in rows])
    correct = torch.tensor([r[1] for r in rows])
    out = length_reward(lengths, correct)
    for (lens, oks), got in zip(rows, out.tolist(), strict=True):
        lo, hi = min(lens), max(lens)
        for length, ok, value in zip(lens, oks, got, strict=True):
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
    st.integers(1, 4).flatmap(
        lambda k: st.tuples(
            st.just(k), st.lists(st.sampled_from(["1+2+0=3,A:3", "A:4", "junk", "1+1"]), min_size=k, max_size=3 * k)
        )
    ),
    st.floats(0, 1),
    st.floats(0, 1),
    st.floats(0, 1),
    st.integers(0, 3),
)
def test_total_reward_is_correctness_plus_the_weighted_terms(
    case, length_weight, repeat_weight, format_weight, iteration
):
    from k15.reward import FormatReward, LengthPenalty, RepetitionPenalty, Responses, RewardModule

    k, texts = case
    texts = texts[: len(texts) // k * k]
    if not texts:
        return
    finish = ["repeat" if i % 3 == 0 else "stop" for i in range(len(texts))]
    tokens = [[ord(c) for c in t] for t in texts]
    shaping = [LengthPenalty(length_weight, warmup_iterations=2), RepetitionPenalty(repeat_weight)]
    reward = RewardModule(shaping=[*shaping, FormatReward(TINY_FORMAT, format_weight)])
    r = reward(Responses(["Q:1+2="] * len(texts), texts, ["3"] * len(texts), tokens, finish, k, iteration))
    correct = torch.tensor([float(t.endswith("A:3")) for t in texts]).view(-1, k)
    repeated = torch.tensor([reason == "repeat" for reason in finish], dtype=torch.float32).view(-1, k)
    formatted = torch.tensor([float(t in ("1+2+0=3,A:3", "A:4")) for t in texts]).view(-1, k)
    length = length_reward(torch.tensor([len(t) for t in texts]).view(-1, k), correct)
    w = length_weight if iteration >= 2 else 0.0
    torch.testing.assert_close(r.total, correct + w * length - repeat_weight * repeated + format_weight * formatted)
    torch.testing.assert_close(r.total, sum(r.parts.values()))
    assert r.correct.tolist() == correct.tolist() and list(r.parts) == ["correct", "length", "repetition", "format"]
    assert r.reasons["correct"] == [
        "match" if t.endswith("A:3") else "mismatch" if "A:" in t else "no_answer" for t in texts
    ]
    assert r.reasons["repetition"] == ["looped" if f == "repeat" else "clean" for f in finish]
    breakdown = r.breakdown()
    assert abs(breakdown["reward/format"] - format_weight * float(formatted.mean())) < 1e-6
    for name in r.reasons:  # each term's reason shares sum to one
        assert abs(sum(v for key, v in breakdown.items() if key.startswith(f"reward/{name}/")) - 1) < 1e-6


# ---- repetition ------------------------------------------------------------------------------

tokens = st.lists(st.integers(0, 5), max_size=60)


@given(tokens, st.integers(1, 8))
def test_repeated_ngram_share_matches_its_definition(ys, n):
    grams = [tuple(ys[t : t + n]) for t in range(len(ys) - n + 1)]
    repeats = sum(g in grams[:t] for t, g in enumerate(grams))
    assert repeated_ngram_share(ys, n) == (repeats / len(grams) if grams else 0.0)
    assert 0.0 <= repeated_ngram_share(ys, n) < 1.0


@given(st.integers(1, 40), st.integers(1, 8))
def test_distinct_tokens_never_repeat(length, n):
    assert repeated_ngram_share(list(range(length)), n) == 0.0


@given(st.integers(2, 10), st.integers(2, 12), st.integers(1, 6))
def test_a_looping_block_scores_one_minus_block_over_ngrams(block, copies, n):
    ys = list(range(block)) * copies  # a block of distinct tokens: its cyclic n-grams are distinct
    grams = block * copies - n + 1
    if grams < block:
        return
    assert abs(repeated_ngram_share(ys, n) - (1 - block / grams)) < 1e-12


@given(tokens, st.integers(1, 6))
def test_saying_it_again_never_repeats_less(ys, n):
    assert repeated_ngram_share(ys + ys, n) >= repeated_ngram_share(ys, n)


def test_repetition_penalty_term_scores_loops_and_shares():
    from k15.reward import RepetitionPenalty, Responses

    responses = Responses(
        ["q"] * 3,
        ["a"] * 3,
        ["a"] * 3,
        [[1, 2, 3, 4], [1, 2, 1, 2, 1, 2], [5]],
        ["stop", "stop", "repeat"],
        k=3,
        iteration=0,
    )
    scores = RepetitionPenalty(weight=1.0, ngram=2).score(responses, torch.zeros(1, 3))
    torch.testing.assert_close(
        scores.values, torch.tensor([[0.0, -3 / 5, -1.0]])
    )  # 1 2 | 1 2 | 1 2: 3 of 5 bigrams seen before
    assert scores.reasons == ["clean", "repeats", "looped"]
    assert RepetitionPenalty(weight=1.0).score(responses, torch.zeros(1, 3)).values.tolist() == [[0.0, 0.0, -1.0]]
