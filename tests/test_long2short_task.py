"""The verbose (long-CoT) addition traces long2short shortens (k1.5 §2.4), their shards, and the
tiny long-CoT configs."""

import json
import random
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from k15_cli import CONF, ROOT, data_args, k15, printed_config, scalars
from transformers import AutoModelForCausalLM, AutoTokenizer

from k15.data.arithmetic import (
    ALPHABET,
    MAX_DIFFICULTY,
    VERBOSE_FRACTION,
    Problem,
    sample_problem,
    teacher_solution,
    teacher_writes_verbose,
    worked_solution,
)
from k15.data.shards import read_records, shard_urls
from k15.models.tiny import char_tokenizer
from k15.reward import FinalAnswerMatch
from k15.rollout.repetition import RepeatDetector

TOKENIZER = char_tokenizer(ALPHABET)
VERIFIER = FinalAnswerMatch("A:")


def tokens(text: str) -> int:
    return len(TOKENIZER(text, add_special_tokens=False)["input_ids"])


def without_checks(verbose: str) -> str:
    """The verbose trace with each column's check (``15=8+7+0``) and the restated sum
    (``57+68=125``) taken out: what a policy that learned to skip them writes."""
    *steps, final = verbose.split(",")
    kept = [s for s in steps if s.count("+") == 2 and s.index("=") > s.index("+")]  # a+b+c=s, not s=b+a+c
    return ",".join(kept + [final])


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), difficulty=st.integers(1, MAX_DIFFICULTY), sloppy=st.booleans())
def test_verbose_trace_is_the_plain_one_with_redundant_checks(seed, difficulty, sloppy):
    problem = sample_problem(random.Random(seed), difficulty)
    plain, verbose = worked_solution(problem, sloppy), worked_solution(problem, sloppy, verbose=True)
    assert set(verbose) <= set(ALPHABET)  # one tokenizer writes both
    # same final answer, judged the same; the plain one is right unless the sloppy solver slipped
    assert VERIFIER.extract(verbose) == VERIFIER.extract(plain)
    assert VERIFIER(verbose, problem.answer) == VERIFIER(plain, problem.answer)
    if not sloppy:
        assert VERIFIER(plain, problem.answer) and VERIFIER(verbose, problem.answer)
    # longer, about 2.2x: every column twice, plus the restated sum
    assert 2 * tokens(plain) <= tokens(verbose) <= 3 * tokens(plain)
    # droppable: without its checks the verbose trace is the plain one, so a shorter policy loses nothing
    assert without_checks(verbose) == plain
    # every check restates its column, added back in the other order, and the restated sum is the answer
    *steps, final = verbose.split(",")
    for step, check in zip(steps[0:-1:2], steps[1:-1:2], strict=True):
        lhs, total = step.split("=")
        a, b, carry = lhs.split("+")
        assert check == f"{total}={b}+{a}+{carry}"
    assert steps[-1] == problem.prompt.removeprefix("Q:") + final.removeprefix("A:")


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), difficulty=st.integers(1, MAX_DIFFICULTY), sloppy=st.booleans())
def test_repeat_detector_never_cuts_a_verbose_trace(seed, difficulty, sloppy):
    problem = sample_problem(random.Random(seed), difficulty)
    ids = TOKENIZER(problem.prompt + worked_solution(problem, sloppy, verbose=True))["input_ids"]
    assert RepeatDetector()(ids + [TOKENIZER.eos_token_id]) is None


@pytest.mark.parametrize("a, b", [("10000", "10000"), ("11111", "11111"), ("99999", "99999"), ("0", "0")])
def test_repeat_detector_never_cuts_the_most_repetitive_verbose_traces(a, b):
    """Equal columns repeat with the period of a step and its check (5 copies at most): below the
    detector's 6, as the plain trace's single steps are."""
    problem = Problem(prompt=f"Q:{a}+{b}=", answer=str(int(a) + int(b)), difficulty=len(a))
    assert RepeatDetector()(TOKENIZER(problem.prompt + worked_solution(problem, verbose=True))["input_ids"]) is None


def test_teacher_style_draws_and_leaves_problems_alone():
    rng = random.Random(0)
    share = sum(teacher_writes_verbose("mix", rng) for _ in range(4000)) / 4000
    assert abs(share - VERBOSE_FRACTION) < 0.03
    assert teacher_writes_verbose("verbose", rng) and not teacher_writes_verbose("plain", rng)
    with pytest.raises(ValueError, match="style"):
        teacher_writes_verbose("long", rng)
    # the style draws nothing from the teacher's generator: same seed, same slips in either style
    problem = Problem(prompt="Q:65+57=", answer="122", difficulty=2)
    plain, verbose = teacher_solution(problem, random.Random(7)), teacher_solution(problem, random.Random(7), True)
    assert plain[1] == verbose[1] and VERIFIER.extract(plain[0]) == VERIFIER.extract(verbose[0])


def make_shards(out, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "tools/make_shards.py", "--out", str(out), "--train", "200", "--heldout", "20", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def long_shards(tmp_path_factory):
    """Mixed-style shards and plain ones from the same seed, written by the real tool."""
    root = tmp_path_factory.mktemp("long_shards")
    for style in ("mix", "plain"):
        assert make_shards(root / style, "--style", style, "--records-per-shard", "100").returncode == 0
    return root


def test_mixed_shards_hold_the_plain_shards_problems_in_both_styles(long_shards):
    mix, plain = (list(read_records(shard_urls(str(long_shards / s / "train-*.tar.gz")))) for s in ("mix", "plain"))
    assert [(r["prompt"], r["teacher"]) for r in mix] == [(r["prompt"], r["teacher"]) for r in plain]
    assert {r["style"] for r in mix} == {"verbose", "plain"} and {r["style"] for r in plain} == {"plain"}
    for record in mix:
        problem = Problem(record["prompt"], record["answer"], record["difficulty"])
        sloppy, verbose = record["teacher"] == "sloppy", record["style"] == "verbose"
        assert record["solution"] == worked_solution(problem, sloppy, verbose)
    heldout = {
        s: [r["prompt"] for r in read_records(shard_urls(str(long_shards / s / "heldout-*.tar.gz")))]
        for s in ("mix", "plain")
    }
    assert heldout["mix"] == heldout["plain"]


def test_style_is_refused_for_tasks_without_one(tmp_path):
    result = make_shards(tmp_path, "--task", "vision", "--style", "verbose")
    assert result.returncode == 2 and "--style" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_long_sft_config_trains_and_exports(long_shards, tiny_dir, tmp_path):
    """conf/tiny_long_sft.yaml as shipped, from a tiny model instead of runs/tiny_sft/hf: a few steps,
    held-out accuracy and response length before and after, an export that loads."""
    k15(
        "fit", "-c", str(CONF / "tiny_long_sft.yaml"), *data_args(long_shards / "mix"),
        f"--model.init_args.model.init_args.path={tiny_dir}",
        "--data.init_args.steps=4", "--data.init_args.examples_per_step=8", "--trainer.val_check_interval=4",
        cwd=tmp_path,
    )  # fmt: skip
    export = tmp_path / "runs/tiny_long_sft/hf"
    assert AutoModelForCausalLM.from_pretrained(export).config.vocab_size == len(TOKENIZER)
    assert AutoTokenizer.from_pretrained(export).get_vocab() == AutoTokenizer.from_pretrained(tiny_dir).get_vocab()
    summary = json.loads((tmp_path / "runs/tiny_long_sft/version_0/summary.json").read_text())
    assert summary["steps"] == 4 and summary["finished"]
    assert 0 < summary["heldout_tokens_before"] <= 128 and 0 < summary["heldout_tokens_after"] <= 128
    assert len(scalars(tmp_path / "runs/tiny_long_sft/version_0")["heldout/tokens_mean"]) == 2  # before, after


def length_penalty(model_args: dict) -> dict:
    terms = {t["class_path"]: t["init_args"] for t in model_args["reward"]["init_args"]["shaping"]}
    return terms["k15.reward.LengthPenalty"]


def test_short_cot_overlay_composes_on_the_long_rl_config():
    """long2short RL = the long-CoT RL config with the length penalty on from iteration 0, half
    the rollout budget and its own outputs; held-out generation keeps the long budget."""
    stack = ["-c", str(CONF / "tiny.yaml"), "-c", str(CONF / "tiny_long.yaml")]
    long_rl = yaml.safe_load(printed_config(*stack))
    short = yaml.safe_load(printed_config(*stack, "-c", str(CONF / "short_cot.yaml")))
    args, long_args = short["model"]["init_args"], long_rl["model"]["init_args"]
    assert long_args["rollout"]["init_args"]["max_new_tokens"] == 128
    assert args["rollout"]["init_args"]["max_new_tokens"] == 64
    assert args["heldout_max_new_tokens"] == long_args["heldout_max_new_tokens"] == 128
    assert length_penalty(args) == {"weight": 1.0, "warmup_iterations": 0}
    assert length_penalty(long_args)["weight"] == 0
    assert args["model"]["init_args"]["path"] == "runs/tiny_long/hf"
    assert long_args["model"]["init_args"]["path"] == "runs/tiny_long_sft/hf"
    exports = [
        c["init_args"]["dirpath"]
        for c in short["trainer"]["callbacks"]
        if c["class_path"] == "k15.export.ExportPretrained"
    ]
    assert exports == ["runs/short_cot/hf"] and short["trainer"]["logger"]["init_args"]["name"] == "short_cot"
    assert short["data"] == long_rl["data"]
