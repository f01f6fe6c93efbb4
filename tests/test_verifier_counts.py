"""Verifier counters: counted by name, every declared name reported (0 when absent), reset when taken."""

import pytest

from k15.reward import RewardModule, Verdict, Verifier


class CountsLong(Verifier):
    """A user's verifier: no __init__ of its own, counts long completions."""

    counted = ("long", "empty")

    def judge(self, question: str, completion: str, answer: str) -> Verdict:
        if len(completion) > 3:
            self.count("long")
        return Verdict(completion == answer, "match" if completion == answer else "mismatch")


def test_counts_are_per_call_of_take_and_name_every_counter():
    reward = RewardModule(verifier=CountsLong())
    assert reward.verifier_counts() == {"reward/verifier/long": 0, "reward/verifier/empty": 0}
    reward.judge(["q"] * 3, ["1", "12345", "123456"], ["1", "1", "1"])
    assert reward.verifier_counts() == {"reward/verifier/long": 2, "reward/verifier/empty": 0}
    assert reward.verifier_counts("heldout/verifier/") == {"heldout/verifier/long": 0, "heldout/verifier/empty": 0}


def test_an_undeclared_counter_is_a_programming_error():
    verifier = CountsLong()
    with pytest.raises(ValueError, match="counts \\('long', 'empty'\\), not 'other'"):
        verifier.count("other")
