"""The arithmetic task, shards on disk, and the batches built from them."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k15.data.arithmetic import ALPHABET, MAX_DIFFICULTY, sample_problem, worked_solution
from k15.data.prompts import prompt_batch
from k15.data.sft import IGNORE_INDEX, sft_batch
from k15.data.shards import read_records, shard_urls, write_shards
from k15.models.tiny import char_tokenizer
from k15.reward import FinalAnswerMatch


@given(st.integers(0, 10**9), st.integers(1, MAX_DIFFICULTY))
def test_worked_solution_is_a_valid_carry_chain(seed, difficulty):
    problem = sample_problem(random.Random(seed), difficulty)
    solution = worked_solution(problem)
    *steps, final = solution.split(",")
    assert FinalAnswerMatch("A:")(solution, problem.answer)
    assert final == "A:" + problem.answer and len(steps) == difficulty
    a, b = problem.prompt[2:-1].split("+")
    assert int(problem.answer) == int(a) + int(b)
    carry = 0
    for step in steps:
        lhs, total = step.split("=")
        x, y, c = map(int, lhs.split("+"))
        assert c == carry and x + y + c == int(total)
        carry = int(total) // 10


def test_shards_round_trip_and_missing_pattern_is_an_error(tmp_path):
    records = [{"prompt": f"Q:{i}+1=", "answer": str(i + 1), "difficulty": 1} for i in range(25)]
    assert write_shards(records, str(tmp_path / "x-%06d.tar"), records_per_shard=10) == 25
    urls = shard_urls(str(tmp_path / "x-*.tar"))
    assert len(urls) == 3
    assert sorted(r["prompt"] for r in read_records(urls)) == sorted(r["prompt"] for r in records)
    shuffled = [r["prompt"] for r in read_records(urls, shuffle_buffer=20, seed=1)]
    assert sorted(shuffled) == sorted(r["prompt"] for r in records)
    with pytest.raises(FileNotFoundError, match="no shards match"):
        shard_urls(str(tmp_path / "y-*.tar"))


def test_prompt_batch_and_sft_batch():
    tok = char_tokenizer(ALPHABET)
    records = [{"prompt": "Q:1+2=", "answer": "3", "difficulty": 1, "solution": "1+2+0=3,A:3"}]
    batch = prompt_batch(records, tok)
    assert batch.prompt_ids[0] == tok("Q:1+2=")["input_ids"] and batch.answers == ["3"]
    sft = sft_batch(records + [{**records[0], "prompt": "Q:10+20=", "solution": "0+0+0=0,1+2+0=3,A:30"}], tok)
    labels = sft.labels[0][sft.labels[0] != IGNORE_INDEX].tolist()
    assert tok.decode(labels[:-1]) == "1+2+0=3,A:3" and labels[-1] == tok.eos_token_id
    assert sft.attention_mask.sum(1).tolist() == [len("Q:1+2=1+2+0=3,A:3") + 2, len("Q:10+20=0+0+0=0,1+2+0=3,A:30") + 2]
    with pytest.raises(ValueError, match="missing"):
        prompt_batch([{"prompt": "Q:1+2="}], tok)


def test_looping_over_no_shards_is_an_error_not_a_hang(tmp_path):
    write_shards([{"prompt": "Q:1+1=", "answer": "2", "difficulty": 1}], str(tmp_path / "x-%06d.tar"))
    empty = write_shards([], str(tmp_path / "e-%06d.tar"))
    assert empty == 0
    with pytest.raises(ValueError, match="no records"):
        next(read_records(shard_urls(str(tmp_path / "e-*.tar")), loop=True))
