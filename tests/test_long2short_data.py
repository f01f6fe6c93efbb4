"""long2short data (k1.5 §2.4): the shortest-correct selection and the pair rule as properties,
their records through real shards and the real tokenizer, and tools/long2short_samples.py end to end."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from k15.data.encode import EncodedPrompt
from k15.data.long2short import long2short_records, rejected_responses, shortest_correct
from k15.data.preference import PREFERENCE_FIELDS, preference_batch
from k15.data.sft import IGNORE_INDEX, SFT_FIELDS, sft_row
from k15.data.shards import read_records, shard_urls, write_shards
from k15.generation import Request, Sampling, hf_sample
from k15.models import Pretrained
from k15.reward import Verdict, Verifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

samples = st.lists(st.tuples(st.integers(1, 40), st.booleans()), min_size=1, max_size=12)  # (ℓ_j, c_j)


@settings(max_examples=300, deadline=None)
@given(samples)
def test_the_selection_keeps_the_shortest_correct_and_the_first_of_equals(group):
    lengths, correct = zip(*group, strict=True)
    w = shortest_correct(lengths, correct)
    if not any(correct):
        assert w is None
        return
    assert correct[w]
    assert all(lengths[w] <= length for length, ok in group if ok)
    assert all(not (ok and length == lengths[w]) for length, ok in group[:w])  # no equal one before it


@settings(max_examples=300, deadline=None)
@given(samples, st.sampled_from([1.0, 1.25, 1.5, 2.0]))
def test_pairs_follow_the_rule_exactly(group, ratio):
    lengths, correct = zip(*group, strict=True)
    rejected = rejected_responses(lengths, correct, ratio)
    if not any(correct):
        assert rejected == []
        return
    w = shortest_correct(lengths, correct)
    assert rejected == sorted(set(rejected)) and w not in rejected
    for j, (length, ok) in enumerate(group):
        if not ok:
            assert j in rejected, "every wrong response is rejected"
        elif j != w and length >= ratio * lengths[w]:
            assert j in rejected, "a correct response ≥ ratio × the shortest is rejected"
        elif j != w:
            assert j not in rejected, "a correct response < ratio × the shortest makes no pair"


def test_the_pair_rule_by_hand():
    # w = 1 (5 tokens); 10 ≥ 7.5 and 9 ≥ 7.5 are rejected, 7 < 7.5 is not; wrong ones at any length
    assert rejected_responses([10, 5, 3, 7, 20, 9], [True, True, False, True, False, True]) == [0, 2, 4, 5]
    assert rejected_responses([4, 6], [True, True]) == [1]  # exactly 1.5×: rejected
    assert rejected_responses([4, 5], [True, True]) == []
    assert rejected_responses([4, 5], [False, False]) == []
    assert shortest_correct([6, 4, 4], [True, True, True]) == 1
    with pytest.raises(ValueError, match="2 lengths for 3 verdicts"):
        rejected_responses([1, 2], [True, True, False])


RECORD = {
    "prompt": "Q:2+3=",
    "answer": "5",
    "difficulty": 1,
    "solution": "2+3+0=5,5=3+2+0,2+3=5,A:5",  # the long trace
    "teacher": "correct",  # about the long trace: not carried over
    "images": [],
    "__key__": "train-000000.tar.gz:00000007",
}
TEXTS = ["2+3+0=5,5=3+2+0,2+3=5,A:5", "2+3+0=5,A:5", "2+3+0=6,A:6", "2+3+0=5,5=3+2+0,A:5"]


def test_records_hold_the_prompt_fields_origin_and_responses_through_real_shards(tmp_path, tiny_dir):
    made = long2short_records(RECORD, TEXTS, [len(t) + 1 for t in TEXTS], [True, True, False, True])
    base = {"prompt": "Q:2+3=", "answer": "5", "difficulty": 1, "origin_key": "train-000000.tar.gz:00000007"}
    assert made.sft == base | {"solution": "2+3+0=5,A:5"}
    # 26 and 20 tokens ≥ 1.5 × 12: rejected; the wrong one too
    assert made.pairs == [base | {"chosen": "2+3+0=5,A:5", "rejected": TEXTS[j]} for j in (0, 2, 3)]
    assert long2short_records(RECORD, TEXTS, [1, 2, 3, 4], [False] * 4).sft is None

    write_shards([made.sft], str(tmp_path / "sft/train-%06d.tar.gz"))
    write_shards(made.pairs, str(tmp_path / "pairs/train-%06d.tar.gz"))
    (sft,) = read_records(shard_urls(str(tmp_path / "sft/train-*.tar.gz")), fields=SFT_FIELDS, split_by_rank=False)
    pairs = list(read_records(shard_urls(str(tmp_path / "pairs/*")), fields=PREFERENCE_FIELDS, split_by_rank=False))
    assert sft["solution"] == "2+3+0=5,A:5" and [p["rejected"] for p in pairs] == [TEXTS[j] for j in (0, 2, 3)]

    # the DPO batch: B chosen rows, then the B rejected ones of the same prompts; labels on the responses only
    tokenizer = Pretrained(str(tiny_dir)).tokenizer()
    prompt = tokenizer(RECORD["prompt"])["input_ids"]
    rows = [tuple(sft_row(EncodedPrompt(prompt), p[side], tokenizer) for side in ("chosen", "rejected")) for p in pairs]
    batch = preference_batch(rows, tokenizer.pad_token_id)
    assert len(batch) == 3 and batch.input_ids.shape[0] == 6
    for row, text in enumerate(["2+3+0=5,A:5"] * 3 + [TEXTS[j] for j in (0, 2, 3)]):
        trained = batch.input_ids[row][batch.labels[row] != IGNORE_INDEX].tolist()
        assert tokenizer.decode(trained, skip_special_tokens=True) == text
        assert trained[-1] == tokenizer.eos_token_id
        assert int(batch.attention_mask[row].sum()) == len(prompt) + len(text) + 1
    assert torch.equal(batch.input_ids[0], batch.input_ids[1])


class EvenLength(Verifier):
    """Correct iff the completion has an even number of characters: a random model's samples then
    mix right and wrong at many lengths, which no answer-checking verifier gives before training."""

    def judge(self, question: str, completion: str, answer: str) -> Verdict:
        return Verdict(len(completion) % 2 == 0, "even" if len(completion) % 2 == 0 else "odd")


def run_tool(*args: str) -> dict:
    env = os.environ | {"PYTHONPATH": ROOT}  # the verifier below is imported from tests/
    result = subprocess.run(
        [sys.executable, "tools/long2short_samples.py", *args], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def tool_args(tiny_dir, shard_dir, out, engine: str) -> list[str]:
    return [
        "--model", str(tiny_dir), "--shards", f"{shard_dir}/train-*.tar.gz", "--prompts", "6", "--samples", "8",
        "--max-new-tokens", "24", "--engine", engine, "--out", str(out / "sft"), "--pairs-out", str(out / "pairs"),
        "--verifier", "{class_path: tests.test_long2short_data.EvenLength}",
    ]  # fmt: skip


def read(pattern: str, fields) -> list[dict]:
    return list(read_records(shard_urls(pattern), fields=fields, split_by_rank=False))


@pytest.mark.slow
def test_tool_on_hf_writes_exactly_what_the_selection_makes_of_the_seeded_samples(tiny_dir, shard_dir, tmp_path):
    """HF generate's seeded samples can be drawn again here: the shards must be the selection's
    records of exactly those samples, and the JSON line their counts and means."""
    report = run_tool(*tool_args(tiny_dir, shard_dir, tmp_path, "hf"))
    records = read(f"{shard_dir}/train-*.tar.gz", SFT_FIELDS)[:6]
    source = Pretrained(str(tiny_dir))
    tokenizer = source.tokenizer()
    requests = [Request(tokenizer(r["prompt"])["input_ids"], 8, 24) for r in records]
    groups = hf_sample(source.model(), requests, Sampling(temperature=1.0, seed=0))
    sft, pairs, correct_lengths, shortest = [], [], [], []
    for record, group in zip(records, groups, strict=True):
        texts = tokenizer.batch_decode([c.token_ids for c in group], skip_special_tokens=True)
        lengths, correct = [len(c.token_ids) for c in group], [len(t) % 2 == 0 for t in texts]
        made = long2short_records(record, texts, lengths, correct)
        sft += [made.sft] if made.sft else []
        pairs += made.pairs
        right = [n for n, ok in zip(lengths, correct, strict=True) if ok]
        correct_lengths += right
        shortest += [min(right)] if right else []
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("images", "__key__")} for r in rs]  # noqa: E731
    assert strip(read(f"{tmp_path}/sft/*", SFT_FIELDS)) == sft and len(sft) > 0
    assert strip(read(f"{tmp_path}/pairs/*", PREFERENCE_FIELDS)) == pairs and len(pairs) > 0
    assert report["engine"] == "HFEngine" and report["prompts"] == 6 and report["samples"] == 48
    assert report["sft_rows"] == report["prompts_with_correct"] == len(sft) and report["pairs"] == len(pairs)
    assert report["mean_correct_tokens"] == round(sum(correct_lengths) / len(correct_lengths), 2)
    assert report["mean_shortest_tokens"] == round(sum(shortest) / len(shortest), 2)


@pytest.mark.slow
@pytest.mark.vllm
def test_tool_on_vllm_keeps_a_shortest_correct_sample_per_prompt_and_pairs_by_the_rule(tiny_dir, shard_dir, tmp_path):
    report = run_tool(*tool_args(tiny_dir, shard_dir, tmp_path, "auto"))
    assert report["engine"] == "VLLMEngine" and report["samples"] == 48
    sft, pairs = read(f"{tmp_path}/sft/*", SFT_FIELDS), read(f"{tmp_path}/pairs/*", PREFERENCE_FIELDS)
    assert len(sft) == report["sft_rows"] == report["prompts_with_correct"] > 0 and len(pairs) == report["pairs"] > 0
    chosen = {r["origin_key"]: r["solution"] for r in sft}
    assert all(len(solution) % 2 == 0 for solution in chosen.values())  # each judged correct
    for pair in pairs:
        assert pair["chosen"] == chosen[pair["origin_key"]]  # y_w is its prompt's SFT solution
        assert pair["rejected"] != pair["chosen"]  # (the lengths are exact in the HF test: seeded samples)


def test_tool_refuses_bad_flags_by_name(tmp_path, tiny_dir, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("long2short_samples", f"{ROOT}/tools/long2short_samples.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / "full").mkdir()
    (tmp_path / "full/train-000000.tar.gz").write_bytes(b"")
    for flags, named in [
        (["--samples", "0"], "--samples"),
        (["--ratio", "0.5"], "--ratio"),
        (["--out", str(tmp_path / "full")], "already holds shards"),
    ]:
        monkeypatch.setattr(sys, "argv", ["long2short_samples.py", "--model", "m", "--shards", "s", *flags])
        with pytest.raises(SystemExit):
            tool.parse_args()
        assert named in capsys.readouterr().err
    for spec, named in [
        ("{class_path: k15.reward.FinalAnswerMatch, init_args: {bogus: 1}}", "bogus"),
        ("{model: {init_args: {}}}", "model.init_args.reward.init_args.verifier"),
    ]:
        with pytest.raises(SystemExit, match=named):
            tool.load_verifier(spec, "A:")
    assert tool.load_verifier(f"{ROOT}/conf/reward/math.yaml", "A:").marker == "A:"  # an overlay's verifier
    assert tool.load_verifier(None, "#").marker == "#"
    for model, shards, named in [("/no/model", "s", "Pretrained.path"), (str(tiny_dir), "/no/shards-*", "no shards")]:
        monkeypatch.setattr(sys, "argv", ["long2short_samples.py", "--model", model, "--shards", shards])
        with pytest.raises(SystemExit, match=named):
            tool.main()
