"""Repetition detector: never fires on the task's real traces, always catches periodic tails."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from k15.data.arithmetic import ALPHABET, MAX_DIFFICULTY, sample_problem, worked_solution
from k15.models.tiny import char_tokenizer
from k15.rollout.repetition import RepeatDetector, find_repetition

TOKENIZER = char_tokenizer(ALPHABET)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), difficulty=st.integers(1, MAX_DIFFICULTY), sloppy=st.booleans())
def test_no_false_positive_on_task_traces(seed, difficulty, sloppy):
    problem = sample_problem(random.Random(seed), difficulty)
    ids = TOKENIZER(problem.prompt + worked_solution(problem, sloppy))["input_ids"] + [TOKENIZER.eos_token_id]
    assert RepeatDetector()(ids) is None


def test_no_false_positive_on_the_most_repetitive_task_trace():
    # 10000+10000: four identical "0+0+0=0," columns and an answer full of zeros
    from k15.data.arithmetic import Problem

    problem = Problem(prompt="Q:10000+10000=", answer="20000", difficulty=5)
    assert RepeatDetector()(TOKENIZER(problem.prompt + worked_solution(problem))["input_ids"]) is None


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.lists(st.integers(0, 50), max_size=40),
    block=st.lists(st.integers(0, 50), min_size=1, max_size=32),
    copies=st.integers(0, 40),
)
def test_periodic_tail_is_caught_within_its_first_copies(prefix, block, copies):
    detector = RepeatDetector(max_period=32, min_repeats=6, min_span=24)
    needed = max(detector.min_repeats, -(-detector.min_span // len(block)))  # copies that make it certain
    tokens = prefix + block * (needed + copies)
    cut = detector(tokens)
    assert cut is not None
    assert cut <= len(prefix) + needed * len(block)  # stopped no later than the loop became certain
    # what is kept still ends inside the loop: the detector never cuts into the clean prefix
    assert cut > len(prefix) or find_repetition(prefix[:cut]) is not None


@given(st.lists(st.integers(0, 1000), max_size=200, unique=True))
def test_sequences_without_repeated_tokens_never_fire(tokens):
    assert find_repetition(tokens) is None
