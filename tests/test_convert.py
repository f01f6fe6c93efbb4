"""tools/make_shards.py --from: JSONL and Parquet prompt sets to shards, every row checked."""

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from k15.data.convert import Rejected, choose_layout, convert, difficulty_value, key_paths, lookup
from k15.data.pool import load_pool
from k15.data.shards import read_records, shard_urls
from k15.errors import K15Error

ROOT = Path(__file__).resolve().parents[1]


def image(format: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(out, format=format)
    return out.getvalue()


def rows(folder) -> list[dict]:
    (folder / "dots.png").write_bytes(image("PNG"))
    (folder / "broken.png").write_bytes(b"not an image")
    ok = {"answer": "2", "difficulty": 1, "domain": "vision"}
    return [
        {"prompt": "Q:1+1=", **ok},
        {"prompt": "How many dots?", **ok, "images": ["dots.png"]},
        {
            "prompt": "Two images",
            **ok,
            "images": [{"bytes": image("JPEG"), "path": None}, {"bytes": image("GIF"), "path": None}],
        },
        {"prompt": "Q:2+2=", "answer": "4"},  # no difficulty
        {"prompt": " ", **ok},
        {"prompt": "Where?", **ok, "images": ["gone.png"]},
        {"prompt": "Broken", **ok, "images": ["broken.png"]},
    ]


def make_shards(*args):
    result = subprocess.run(
        [sys.executable, "tools/make_shards.py", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return result, json.loads(result.stdout.splitlines()[-1]) if result.returncode == 0 else None


def check(report, out):
    assert report["written"] == 3
    assert report["rejected"] == {"missing_field": 1, "empty_prompt": 1, "missing_image": 1, "bad_image": 1}
    pool = load_pool(shard_urls(f"{out}/train-*.tar"))
    assert pool.prompts == ["Q:1+1=", "How many dots?", "Two images"] and not pool.skipped
    assert [len(i) for i in pool.images] == [0, 1, 2]
    assert [Image.open(io.BytesIO(b)).format for b in pool.images[2]] == ["JPEG", "PNG"]  # GIF stored as PNG


def test_jsonl_converts_with_a_report_of_rejects(tmp_path):
    lines = [json.dumps(r) for r in rows(tmp_path) if not any(isinstance(i, dict) for i in r.get("images", []))]
    lines.insert(1, "{not json")
    (tmp_path / "set.jsonl").write_text("\n".join(lines) + "\n")
    result, report = make_shards("--from", str(tmp_path / "set.jsonl"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert report["rejected"]["undecodable_json"] == 1 and report["written"] == 2


def test_parquet_with_paths_and_bytes_converts(tmp_path):
    table = rows(tmp_path)
    for row in table:  # one schema for every row: images as {bytes, path} structs, as HF datasets writes them
        row["images"] = [i if isinstance(i, dict) else {"bytes": None, "path": i} for i in row.get("images", [])]
        row.setdefault("difficulty", None)
        row.setdefault("domain", None)
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "set.parquet")
    result, report = make_shards("--from", str(tmp_path / "set.parquet"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    check(report, tmp_path / "out")


def test_a_file_with_no_usable_row_fails_clearly(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    result, _ = make_shards("--from", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "out"))
    assert result.returncode != 0 and "no usable rows" in result.stderr and "missing_field" in result.stderr


# --- other layouts: DAPO-Math-17k (verl) and problem/answer sets (DeepScaleR, OpenR1-Math) ---

DAPO_TEXT = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)


def dapo_row(index: int, turns: list[tuple[str, str]], truth: str | None) -> dict:
    """A row as verl's DAPO-Math-17k Parquet holds it: a list-of-struct prompt, struct columns."""
    return {
        "data_source": "math_dapo",
        "prompt": [{"content": content, "role": role} for role, content in turns],
        "ability": "MATH",
        "reward_model": {"ground_truth": truth, "style": "rule"},
        "extra_info": {"index": f"id-{index}"},
    }


def dapo_file(folder: Path) -> Path:
    question = DAPO_TEXT.format("What is $17 + 17$?")
    rows = [
        dapo_row(0, [("user", question)], "34"),
        dapo_row(1, [("system", "You are a helpful assistant."), ("user", "How many primes are below 12?")], "5"),
        dapo_row(2, [("user", "First question"), ("user", "Second question")], "1"),
        dapo_row(3, [("user", "Q"), ("assistant", "A prefilled answer")], "1"),
        dapo_row(4, [("system", "Only a system turn")], "1"),
        dapo_row(5, [("user", question)], "34"),  # the published set repeats its problems
        dapo_row(6, [("user", "No reference answer")], None),
    ]
    pq.write_table(pa.Table.from_pylist(rows), folder / "dapo-math-17k.parquet")
    return folder / "dapo-math-17k.parquet"


def problem_answer_file(folder: Path) -> Path:
    """OpenR1-Math-220k's columns plus MATH's ``level``."""
    rows = [
        {"problem": "Find $x$ if $2x = 6$.", "solution": "x = 3. \\boxed{3}", "answer": "3", "level": "Level 3"},
        {"problem": "Compute $1/2 + 1/4$.", "solution": "\\boxed{\\frac34}", "answer": "\\frac{3}{4}", "level": "5"},
        {"problem": "Prove it.", "solution": "...", "answer": "proof", "level": "Level ?"},
        {"problem": "  ", "solution": "", "answer": "1", "level": "Level 1"},
        {"problem": "No solution here", "solution": None, "answer": "7", "level": None},
    ]
    for row in rows:
        row |= {"problem_type": "Algebra", "question_type": "math-word-problem", "source": "olympiads"}
    pq.write_table(pa.Table.from_pylist(rows), folder / "openr1.parquet")
    return folder / "openr1.parquet"


def shard_records(out: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in ("images", "__key__")}
        for r in read_records(shard_urls(f"{out}/train-*.tar"), split_by_rank=False)
    ]


def test_dapo_layout_keeps_the_user_turn_and_the_ground_truth(tmp_path):
    result, report = make_shards("--from", str(dapo_file(tmp_path)), "--layout", "dapo", "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert report["rejected"] == {
        "not_one_user_turn": 2,  # two user turns; only a system turn
        "unexpected_role": 1,
        "duplicate": 1,
        "missing_field": 1,
    }
    assert report["dropped_system_turns"] == 1 and report["defaulted_difficulty"] == 2
    assert report["layout"]["answer_key"] == "reward_model.ground_truth" and report["layout"]["name"] == "dapo"
    pool = load_pool(shard_urls(f"{tmp_path}/o/train-*.tar"))
    assert pool.prompts == [DAPO_TEXT.format("What is $17 + 17$?"), "How many primes are below 12?"]
    assert pool.answers == ["34", "5"] and pool.difficulties == [1, 1]
    # k15's fields and the source only: no reward_model, extra_info or ability in the shards
    assert [sorted(r) for r in shard_records(tmp_path / "o")] == [["answer", "difficulty", "prompt", "source"]] * 2
    assert shard_records(tmp_path / "o")[0]["source"] == "math_dapo"


def test_problem_answer_layout_with_level_difficulties_and_with_the_default(tmp_path):
    source = problem_answer_file(tmp_path)
    report = convert(
        source, f"{tmp_path}/lv/train-%06d.tar", layout=choose_layout("problem-answer", difficulty_key="level")
    )
    assert report["rejected"] == {"bad_difficulty": 1, "empty_prompt": 1}
    assert report["difficulty"] == {1: 1, 3: 1, 5: 1} and report["defaulted_difficulty"] == 1  # level None: default
    records = shard_records(tmp_path / "lv")
    assert [r["difficulty"] for r in records] == [3, 5, 1]
    assert [r["answer"] for r in records] == ["3", "\\frac{3}{4}", "7"]
    assert [r.get("solution") for r in records] == ["x = 3. \\boxed{3}", "\\boxed{\\frac34}", None]
    assert {r["source"] for r in records} == {"olympiads"} and "problem_type" not in records[0]

    report = convert(source, f"{tmp_path}/d/train-%06d.tar", layout=choose_layout("problem-answer"))
    assert report["rejected"] == {"empty_prompt": 1} and report["difficulty"] == {1: 4}


def test_a_json_array_with_number_and_list_answers(tmp_path):
    """DeepScaleR ships one JSON array; answers as numbers or lists are as described in convert.py."""
    rows = [
        {"problem": "1+1?", "answer": 2, "solution": "2"},
        {"problem": "Half?", "answer": 0.5},
        {"problem": "Roots?", "answer": ["-1"]},
        {"problem": "Both roots?", "answer": ["-1", "1"]},
        {"problem": "Blank", "answer": " "},
        {"problem": "Flag", "answer": True},
        ["not", "an", "object"],
    ]
    (tmp_path / "deepscaler.json").write_text(json.dumps(rows, indent=1))
    report = convert(
        tmp_path / "deepscaler.json", f"{tmp_path}/o/train-%06d.tar", layout=choose_layout("problem-answer")
    )
    assert report["rejected"] == {"many_answers": 1, "empty_answer": 1, "missing_field": 1, "undecodable_json": 1}
    records = shard_records(tmp_path / "o")
    assert [r["answer"] for r in records] == ["2", "0.5", "-1"]
    assert records[0]["source"] == "deepscaler.json"


def test_key_flags_override_the_preset(tmp_path):
    rows = [{"question": "Q:3+4=", "reward_model": {"ground_truth": 7}, "meta": {"level": "Level 2"}, "worked": "A:7"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "set.parquet")
    flags = ["--prompt-key", "question", "--difficulty-key", "meta.level", "--solution-key", "worked"]
    result, report = make_shards(
        "--from", str(tmp_path / "set.parquet"), "--layout", "dapo", *flags, "--out", str(tmp_path / "o")
    )
    assert result.returncode == 0, result.stderr
    assert report["layout"] == {
        "name": "dapo",
        "prompt_key": "question",
        "answer_key": "reward_model.ground_truth",
        "difficulty_key": "meta.level",
        "default_difficulty": 1,
        "solution_key": "worked",
    }
    assert shard_records(tmp_path / "o") == [
        {"prompt": "Q:3+4=", "answer": "7", "difficulty": 2, "source": "set.parquet", "solution": "A:7"}
    ]


def test_an_unknown_key_fails_in_one_line_naming_the_flag_and_writes_nothing(tmp_path):
    source = dapo_file(tmp_path)
    result, _ = make_shards(
        "--from", str(source), "--layout", "dapo", "--answer-key", "reward_model.truth", "--out", str(tmp_path / "o")
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--answer-key 'reward_model.truth'" in result.stderr and "reward_model.ground_truth" in result.stderr
    assert not (tmp_path / "o").exists()
    (tmp_path / "set.jsonl").write_text('{"problem": "x", "answer": "1"}\n')  # JSON: keys from its rows
    with pytest.raises(K15Error, match="--prompt-key 'prompt'.*layout dapo"):
        convert(tmp_path / "set.jsonl", f"{tmp_path}/j/train-%06d.tar", layout=choose_layout("dapo"))
    assert not (tmp_path / "j").exists()


def test_the_k15_layout_keeps_scalar_metadata_and_a_default_difficulty(tmp_path):
    rows = [{"prompt": "Q:1+1=", "answer": 2, "domain": "arithmetic", "meta": {"x": 1}, "teacher": "correct"}]
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = convert(tmp_path / "set.jsonl", f"{tmp_path}/o/train-%06d.tar", layout=choose_layout(default_difficulty=2))
    assert report["written"] == 1 and report["defaulted_difficulty"] == 1
    assert shard_records(tmp_path / "o") == [
        {
            "prompt": "Q:1+1=",
            "answer": "2",
            "difficulty": 2,
            "domain": "arithmetic",
            "teacher": "correct",
            "source": "set.jsonl",
        }  # fmt: skip
    ]


# --- properties of the pure functions ---

names = st.text(alphabet="abcdefgh_", min_size=1, max_size=4)
trees = st.recursive(
    st.integers() | st.text(max_size=5),
    lambda inner: st.dictionaries(names, inner, min_size=1, max_size=3),
    max_leaves=12,
).filter(lambda tree: isinstance(tree, dict))


def leaves(tree: dict, path: tuple = ()):
    for name, value in tree.items():
        yield from leaves(value, (*path, name)) if isinstance(value, dict) else [((*path, name), value)]


@settings(max_examples=50, deadline=None)
@given(trees)
def test_a_dotted_key_reaches_every_leaf_of_a_nested_dict(tree):
    for path, value in leaves(tree):
        key = ".".join(path)
        assert lookup(tree, key) == value and key in set(key_paths(tree))
        assert lookup(tree, key + ".deeper") is None and lookup(tree, "zz." + key) is None


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from(["Level ", "level", "L-", "Stufe ", ""]), st.sampled_from(["", " "]))
def test_level_n_parses_to_n(n, prefix, tail):
    assert (
        difficulty_value(f"{prefix}{n}{tail}", None) == n == difficulty_value(n, None) == difficulty_value(float(n), 4)
    )
    assert difficulty_value(None, n) == n
    with pytest.raises(Rejected, match="bad_difficulty"):
        difficulty_value(f"{prefix}?", None)


def test_a_bad_flag_value_fails_in_one_line(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("make_shards", ROOT / "tools" / "make_shards.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for flags, named in (
        (["--layout", "verl"], "--layout"),
        (["--default-difficulty", "easy"], "--default-difficulty"),
    ):
        monkeypatch.setattr(sys, "argv", ["make_shards.py", "--from", "x.parquet", "--out", str(tmp_path), *flags])
        with pytest.raises(SystemExit) as stop:
            tool.main()
        error = capsys.readouterr().err
        assert stop.value.code == 2 and len(error.strip().splitlines()) == 1 and named in error
    monkeypatch.setattr(sys, "argv", ["make_shards.py", "--from", str(tmp_path / "none.parquet"), "--layout", "dapo"])
    with pytest.raises(SystemExit, match="--from .*none.parquet: no such file"):
        tool.main()
