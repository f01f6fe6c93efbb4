"""CodeTests: code rewards from the real sandbox, as a verifier the RewardModule takes from YAML."""

import json

import pytest

from k15.reward import Responses, RewardModule
from k15.reward.code import CodeTests, parse_test_cases

ADDITION = json.dumps([{"stdin": f"{a} {b}\n", "expected": f"{a + b}\n"} for a, b in [(1, 2), (10, 5), (0, 0)]])
RIGHT = "I read two numbers and print their sum.\n```python\na, b = map(int, input().split())\nprint(a + b)\n```"
WRONG = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"


@pytest.fixture(scope="module")
def code() -> CodeTests:
    return CodeTests(cpu_seconds=1, wall_seconds=3, workers=2)


def test_the_last_code_block_is_the_program(code):
    assert code.extract("draft:\n```python\nprint(1)\n```\nfinal:\n```py\nprint(2)\n```") == "print(2)\n"
    assert code.extract("no code here") is None


def test_a_batch_is_scored_in_order_with_verdicts_counted(code):
    completions = [RIGHT, WRONG, "print(3) without a fence", RIGHT, RIGHT.replace("print(a + b)", "while True: pass")]
    answers = [ADDITION] * 4 + [ADDITION]
    answers[3] = "not json"  # a broken record: wrong, and counted against the data
    code.take_counts()  # the fixture is shared: count this batch only
    verdicts = code.judge_many([""] * 5, completions, answers)
    assert [v.correct for v in verdicts] == [True, False, False, False, False]
    assert [v.reason for v in verdicts] == ["pass", "wrong", "no_code", "bad_tests", "timeout"]
    counts = code.take_counts()
    assert counts["bad_tests"] == 1
    # three passing programs × their tests, one wrong and one timed-out program
    assert counts["tests_ok"] >= 3 and counts["tests_wrong"] >= 1 and counts["tests_timeout"] >= 1
    assert counts["tests_memory"] == counts["tests_compile_error"] == 0  # every name, 0 when absent


def test_test_cases_must_be_a_non_empty_list_of_stdin_expected():
    assert [c.expected for c in parse_test_cases(ADDITION)] == ["3\n", "15\n", "0\n"]
    for bad in ("[]", "{}", '[{"stdin": "1"}]', "[1, 2]", "oops"):
        assert parse_test_cases(bad) is None


def test_reward_module_takes_code_tests_as_its_verifier(code):
    completions = [RIGHT, WRONG, WRONG, RIGHT]
    responses = Responses(["add"] * 4, completions, [ADDITION] * 4, [[0] * 30] * 4, ["stop"] * 4, k=2, iteration=0)
    rewards = RewardModule(verifier=code)(responses)
    assert rewards.correct.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert rewards.reasons["correct"] == ["pass", "wrong", "wrong", "pass"]
