"""Prompt-set curation: the pure math (k15/data/curate.py) and tools/curate.py end to end."""

import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from k15.data.curate import (
    average_hash,
    closed_set_prompts,
    difficulty_from_pass_rate,
    find_duplicates,
    image_digest,
    lsh_bands,
    normalise,
    shingles,
    unevaluable_kind,
)
from k15.data.pool import load_pool
from k15.data.shards import read_records, shard_urls

ROOT = Path(__file__).resolve().parents[1]


def png(pixels: list[int], side: int = 4) -> bytes:
    """A side×side grey PNG of ``pixels`` (row-major, 0–255), scaled up to 32×32."""
    image = Image.new("L", (side, side))
    image.putdata(pixels)
    out = io.BytesIO()
    image.resize((32, 32), Image.Resampling.NEAREST).save(out, format="PNG")
    return out.getvalue()


@settings(max_examples=80, deadline=None)
@given(
    text=st.text("abcdefghij", min_size=200, max_size=400),
    cut=st.integers(0, 4) | st.integers(0, 400),  # small changes half the time: J ≥ 0.97 often
    tail=st.text("abcdefghij", max_size=2) | st.text("abcdefghij", max_size=40),
)
def test_text_near_duplicates_are_found_by_jaccard_similarity(text, cut, tail):
    other = text[: len(text) - cut] + tail  # a shared prefix: J anywhere in 0..1
    a, b = shingles(normalise(text), 5), shingles(normalise(other), 5)
    true = len(a & b) / len(a | b)
    duplicates = find_duplicates([text, other], ["1", "2"], [[], []])  # other answers: never exact
    # the estimate's standard deviation at 128 permutations is 0.015 at J = 0.97 and 0.041 at
    # J = 0.7, so these are ≥ 4.6 of them from the 0.9 threshold; between them either may happen
    if true >= 0.97:
        assert duplicates == {1: ("near_duplicate", 0)}
    if true <= 0.7:
        assert duplicates == {}


def test_near_duplicates_point_at_their_original_among_many_prompts():
    rng = random.Random(0)
    words = "apple train river seven count green stone cloud north paper glass tiger music bread light".split()
    prompts = [" ".join(rng.choices(words, k=40)) + "?" for _ in range(300)]  # 240 characters each, pairwise J < 0.5
    prompts += [p[:50] + "x" + p[50:] for p in (prompts[7], prompts[150], prompts[299])]  # one character more: J = 0.96
    prompts += [prompts[42][:180] + " and a new ending?"]  # J = 0.75: not a near duplicate
    answers = [str(i) for i in range(len(prompts))]
    duplicates = find_duplicates(prompts, answers, [[] for _ in prompts])
    assert duplicates == {300: ("near_duplicate", 7), 301: ("near_duplicate", 150), 302: ("near_duplicate", 299)}


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.text("ab +=", min_size=1), st.sampled_from("12")),
        min_size=1,
        max_size=12,
    ),
    copies=st.lists(st.tuples(st.integers(0, 11), st.booleans()), max_size=12),
)
def test_exact_duplicates_are_always_removed(records, copies):
    prompts, answers = [p for p, _ in records], [a for _, a in records]
    for index, shout in copies:  # a copy in another case and spacing, appended later
        prompt, answer = records[index % len(records)]
        prompts.append(f"  {prompt.upper() if shout else prompt}\n ")
        answers.append(answer)
    images = [[] for _ in prompts]
    duplicates = find_duplicates(prompts, answers, images)
    kept = [(normalise(p), a) for i, (p, a) in enumerate(zip(prompts, answers, strict=True)) if i not in duplicates]
    assert len(kept) == len(set(kept))
    for i, (reason, j) in duplicates.items():
        assert j < i and duplicates.get(j, ("",))[0] != "exact_duplicate"
        if reason == "near_duplicate":
            assert j not in duplicates  # compared with kept records only


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(0, 255), min_size=16, max_size=16),
        min_size=2,
        max_size=6,
        unique_by=tuple,
    )
)
def test_records_with_different_images_are_never_exact_duplicates(pictures):
    images = [[png(pixels)] for pixels in pictures]
    assert len({image_digest(i) for i in images}) == len(images)
    prompts, answers = ["How many circles?"] * len(images), ["2"] * len(images)
    duplicates = find_duplicates(prompts, answers, images, image_near=True)
    assert all(reason == "near_duplicate" for reason, _ in duplicates.values())


def test_near_duplicate_images_share_text_and_average_hash():
    left_half = png([0, 0, 255, 255] * 4)
    top_half = png([0] * 8 + [255] * 8)
    resized = io.BytesIO()
    Image.open(io.BytesIO(left_half)).resize((48, 48)).save(resized, format="PNG")
    copy = resized.getvalue()
    assert average_hash(copy) == average_hash(left_half) != average_hash(top_half)
    question = "Which half is dark?"
    prompts = [question, "which half is  dark?", question, "Another question", question]
    images = [[left_half], [copy], [top_half], [left_half], [copy]]
    answers = ["left", "left", "top", "left", "right"]  # the last: another answer
    near = {1: ("near_duplicate", 0)}
    assert find_duplicates(prompts, answers, images, image_near=True) == near
    assert find_duplicates(prompts, answers, images) == {}  # off by default


def test_average_hash_survives_resizing_and_jpeg_and_tells_drawings_apart():
    def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
        out = io.BytesIO()
        image.save(out, format=fmt, **options)
        return out.getvalue()

    def drawing(boxes) -> Image.Image:  # dark shapes on white, like the vision tasks
        image = Image.new("RGB", (96, 96), "white")
        for box in boxes:
            ImageDraw.Draw(image).ellipse(box, fill="navy")
        return image

    one = drawing([(5, 5, 50, 50), (55, 40, 90, 90)])
    copies = [encoded(one.resize((64, 64))), encoded(one.resize((160, 160))), encoded(one, "JPEG", quality=80)]
    others = [drawing([(40, 5, 90, 50), (5, 55, 45, 90)]), drawing([(5, 5, 90, 40)])]
    assert {average_hash(c) for c in copies} == {average_hash(encoded(one))}
    assert average_hash(encoded(one)) not in {average_hash(encoded(o)) for o in others}


@given(samples=st.integers(1, 64), data=st.data())
def test_difficulty_falls_as_pass_rate_rises_and_stays_in_1_to_5(samples, data):
    low = data.draw(st.integers(0, samples))
    high = data.draw(st.integers(low, samples))
    difficulty = difficulty_from_pass_rate
    assert 1 <= difficulty(high, samples) <= difficulty(low, samples) <= 5
    assert difficulty(samples, samples) == 1 and difficulty(0, samples) == 5


def test_difficulty_bins_for_ten_samples():
    by_correct = [difficulty_from_pass_rate(c, 10) for c in range(11)]
    assert by_correct == [5, 5, 4, 4, 3, 3, 3, 2, 2, 1, 1]


def test_lsh_bands_catch_pairs_at_the_threshold():
    bands, rows = lsh_bands(128, 0.9)
    assert (bands, rows) == (16, 8) and 1 - (1 - 0.9**rows) ** bands >= 0.999


@pytest.mark.parametrize(
    "prompt, answer, kind",
    [
        ("What is 2+3? (A) 4 (B) 5 (C) 6", "5", "multiple_choice"),
        ("Which is larger?\nA. 3\nB. 4", "4", "multiple_choice"),
        ("Which option is right?", "(C)", "multiple_choice"),
        ("Solve (a) x+1=2 and (b) y+2=5; give x+y.", "4", None),
        ("Is 7 a prime number?", "Yes", "true_false"),
        ("True or false: 2 > 3.", "FALSE", "true_false"),
        ("Prove that the sum of two even numbers is even.", "even", "proof"),
        ("Show that x^2 >= 0 for every real x.", "0", "proof"),
        ("Demonstrate that 7 divides 49.", "7", "proof"),
        ("How can we improve the yield by 10%?", "10", None),
        ("Q:57+68=", "125", None),
    ],
)
def test_evaluability_rules(prompt, answer, kind):
    assert unevaluable_kind(prompt, answer) == kind


def test_evaluability_rules_switch_off_one_by_one():
    kinds = ("multiple_choice", "proof")
    assert unevaluable_kind("Is 7 a prime number?", "yes", kinds) is None
    assert unevaluable_kind("Prove it. (A) yes (B) no", "A", ("proof",)) == "proof"


def test_closed_set_finds_an_unlisted_three_way_choice():
    prompts = ["More circles or squares?"] * 5 + ["How many circles?"] * 5
    answers = ["circle", "square", "same", "circle", "same", "0", "1", "2", "3", "4"]
    assert closed_set_prompts(prompts, answers, 3) == {"more circles or squares?"}
    assert closed_set_prompts(prompts, answers, 2) == set()
    assert closed_set_prompts(prompts, answers, 0) == set()


def write_input(folder: Path, left_half: bytes, top_half: bytes) -> None:
    """14 records: 6 to keep, 3 exact and 2 near duplicates, 3 hard to verify."""
    bigger = io.BytesIO()
    Image.open(io.BytesIO(left_half)).resize((48, 48)).save(bigger, format="PNG")
    story = "Q:A shop sells 12 pens a day and 15 on weekend days, how many in a week="
    text = [
        ("Q:12+34=", "46"),
        ("Q:5+7=", "12"),
        ("Q:123+456=", "579"),
        (story, "90"),
        ("q:12+34= ", "46"),  # exact duplicate of the first (case, spacing)
        ("Q:5+7=", "12"),  # exact duplicate
        (story[:-1] + "?", "90"),  # near duplicate: one character changed
        ("Is 7 a prime number?", "true"),  # true/false
        ("Prove that 2+2=4.", "4"),  # proof
        ("What is 2+3? (A) 4 (B) 5", "B"),  # multiple choice
    ]
    question = "Which half is dark?"
    with_images = [
        ("left", left_half),
        ("top", top_half),  # the same text with another image: kept
        ("left", left_half),  # exact duplicate
        ("left", bigger.getvalue()),  # near duplicate (resized)
    ]
    samples = [
        {"__key__": f"t{i}", "json": {"prompt": p, "answer": a, "difficulty": 3}} for i, (p, a) in enumerate(text)
    ] + [
        {"__key__": f"v{i}", "json": {"prompt": question, "answer": a, "difficulty": 2}} | {"00.png": picture}
        for i, (a, picture) in enumerate(with_images)
    ]
    with wds.ShardWriter(str(folder / "train-%06d.tar"), maxcount=8, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)


@pytest.mark.slow
def test_curate_end_to_end(tmp_path, tiny_dir):
    left_half, top_half = png([0, 0, 255, 255] * 4), png([0] * 8 + [255] * 8)
    (tmp_path / "in").mkdir()
    write_input(tmp_path / "in", left_half, top_half)
    out = tmp_path / "out"
    command = f"tools/curate.py --shards {tmp_path}/in/train-*.tar --model {tiny_dir}"
    small = "--hack-tries 2 --pass-samples 3 --max-new-tokens 16 --engine hf"
    small += " --image-near-duplicates"
    result = subprocess.run(
        [sys.executable, *command.split(), "--out", str(out), *small.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    dropped, hacked = report["dropped"], report["dropped"]["easy_to_hack"]
    assert summary["kept"] == report["kept"] and report["in"] == 14
    assert (dropped["exact_duplicate"], dropped["near_duplicate"]) == (3, 2)
    rules = ("true_false", "proof", "multiple_choice", "closed_set")
    assert [dropped[rule] for rule in rules] == [1, 1, 1, 0]
    assert (report["model_checked"], report["not_model_checked"]) == (4, 2)
    assert report["kept"] == report["in"] - sum(dropped.values()) == 6 - hacked
    assert sum(report["pass_rate"].values()) == 4 - hacked
    by_key = {d.pop("key"): d for d in report["dropped_records"]}
    assert by_key["train-000000.tar:t4"]["duplicate_of"] == "train-000000.tar:t0"
    near = {"reason": "near_duplicate", "duplicate_of": "train-000000.tar:t3"}
    assert by_key["train-000000.tar:t6"] == near

    urls = shard_urls(str(out / "train-*.tar.gz"))
    pool = load_pool(urls)
    records = list(read_records(urls, split_by_rank=False))
    assert len(pool) == len(records) == report["kept"]
    for record, images in zip(records, pool.images, strict=True):
        if images:  # not model-checked: the label stays
            assert record["pass_rate"] is None and record["difficulty"] == 2
        else:
            correct = round(record["pass_rate"] * 3)
            assert record["difficulty"] == difficulty_from_pass_rate(correct, 3)
            assert record["difficulty_label_original"] == 3
    assert [i for i in pool.images if i] == [[left_half], [top_half]]


@pytest.mark.slow
def test_a_vision_language_model_checks_image_prompts(tmp_path):
    from k15.models import TinyVLM

    source = TinyVLM(
        "0123456789abcdefghijklmnopqrstuvwxyzAHMS?.:+=, ",
        vision_hidden_size=32,
        vision_layers=1,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=128,
    )
    source.model().save_pretrained(tmp_path / "vlm")
    source.processor().save_pretrained(tmp_path / "vlm")
    shards = ROOT / "shards/vision/heldout-000000.tar.gz"
    small = "--limit 6 --hack-tries 2 --pass-samples 3 --max-new-tokens 8 --no-cot-max-new-tokens 8 --engine hf"
    command = [
        sys.executable,
        "tools/curate.py",
        "--shards",
        str(shards),
        "--model",
        str(tmp_path / "vlm"),
        "--out",
        str(tmp_path / "out"),
    ]
    result = subprocess.run([*command, *small.split()], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["in"] == 6 and report["not_model_checked"] == 0 and report["engine"] == "HFEngine"
    assert report["model_checked"] == 6 - sum(
        report["dropped"][r] for r in ("exact_duplicate", "near_duplicate", "closed_set")
    )
    records = list(read_records(shard_urls(str(tmp_path / "out/train-*.tar.gz")), split_by_rank=False))
    assert len(records) == report["kept"] > 0 and all(
        r["pass_rate"] is not None and len(r["images"]) == 1 for r in records
    )
