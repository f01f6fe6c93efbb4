"""The arithmetic task, shards on disk, and the batches built from them."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k15.data.arithmetic import ALPHABET, MAX_DIFFICULTY, sample_problem, worked_solution
from k15.data.prompts import prompt_batch
from k15.data.sft import IGNORE_INDEX, sft_batch
from k15.data.shards import RecordStream, read_records, shard_urls, write_shards
from k15.errors import K15Error
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
    assert next(read_records(urls))["__key__"] == "x-000000.tar:00000000"  # "<shard file name>:<sample key>"
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


def test_a_stream_over_no_records_is_an_error_not_a_hang(tmp_path):
    write_shards([{"prompt": "Q:1+1=", "answer": "2", "difficulty": 1}], str(tmp_path / "x-%06d.tar"))
    empty = write_shards([], str(tmp_path / "e-%06d.tar"))
    assert empty == 0
    with pytest.raises(K15Error, match="no usable record .* 'e-'"):
        next(RecordStream(shard_urls(str(tmp_path / "e-*.tar")), {}, 0, 0, "'e-'"))
    # a pass whose every record is skipped by the consumer is the same dead end
    stream = RecordStream(shard_urls(str(tmp_path / "x-*.tar")), {}, 0, 0, "'x-'")
    with pytest.raises(K15Error, match="no usable record .* 'x-'.*1 too_long"):
        stream.take(1, lambda record: "too_long")


def test_a_stream_loops_reshuffled_and_restores_its_position(tmp_path):
    write_shards(
        [{"prompt": f"Q:{i}", "answer": "1", "difficulty": 1} for i in range(30)],
        str(tmp_path / "x-%06d.tar"),
        records_per_shard=7,
    )
    urls = shard_urls(str(tmp_path / "x-*.tar"))
    stream = RecordStream(urls, {}, 10, 3, "x")
    first, second = [next(stream)["__key__"] for _ in range(30)], [next(stream)["__key__"] for _ in range(30)]
    assert sorted(first) == sorted(second) and first != second  # every record once a pass, a new order each pass
    resumed = RecordStream(urls, {}, 10, 3, "x")
    resumed.restore(45, {"too_long": 2})
    assert [next(resumed)["__key__"] for _ in range(15)] == second[15:]
    assert resumed.position == 60 and resumed.skipped == {"too_long": 2}
