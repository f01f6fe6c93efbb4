"""Reward models as verifiers: the verdict parser (property tests), judging shards, the scalar RM
trained through the real CLI and used as a judge, the GenRM's invalid verdicts, the overlays."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st
from k15_cli import printed_config
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification

from k15.data.judging import judging_batch
from k15.data.shards import read_records
from k15.models import Pretrained, TinyQwen2
from k15.reward import RewardModule
from k15.reward.answer import FinalAnswerMatch, Verdict
from k15.reward.generative_rm import GenerativeRM, VerdictMatch, parse_verdict, verdict_of
from k15.reward.judge_prompt import JUDGE_ALPHABET
from k15.reward.scalar_rm import ScalarRM, ScalarRMModule

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SMALL = dict(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)

# ---------------------------------------------------------------- the verdict parser


def render(correct: bool, style: str) -> str:
    word = "true" if correct else "false"
    return {
        "json": json.dumps({"correct": correct}),
        "compact": f'{{"correct":{word}}}',
        "single_quotes": f"{{'correct': {word}}}",
        "python": repr({"correct": correct}),  # {'correct': True}
        "yes_no": json.dumps({"correct": "yes" if correct else "no"}),
        "trailing_comma": f'{{"reason": "checked", "correct": {word},}}',
        "bare_key": f"{{correct: {word}}}",
        "fenced": f'```json\n{{\n  "correct": {word}\n}}\n```',
        "nested": json.dumps({"correct": correct, "why": {"got": "1{2}", "want": [1, {"x": None}]}}),
    }[style]


STYLES = st.sampled_from(
    ["json", "compact", "single_quotes", "python", "yes_no", "trailing_comma", "bare_key", "fenced", "nested"]
)
PROSE = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=40)


@given(correct=st.booleans(), style=STYLES, before=PROSE, after=PROSE)
def test_a_verdict_is_read_through_any_formatting_and_surrounding_text(correct, style, before, after):
    assert parse_verdict(before + render(correct, style) + after) is correct


@given(first=st.booleans(), last=st.booleans(), style=STYLES, between=PROSE)
def test_the_last_verdict_wins(first, last, style, between):
    assert parse_verdict(render(first, "json") + between + render(last, style)) is last


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=6,
)


@given(
    correct=st.booleans(),
    extra=st.dictionaries(
        st.text(max_size=6).filter(lambda k: k.strip().lower() != "correct"), JSON_VALUES, max_size=4
    ),
    after=st.dictionaries(
        st.text(max_size=6).filter(lambda k: k.strip().lower() != "correct"), JSON_VALUES, max_size=2
    ),
)
def test_other_keys_and_later_objects_without_a_verdict_do_not_matter(correct, extra, after):
    assert parse_verdict(json.dumps(extra | {"correct": correct}) + " then " + json.dumps(after)) is correct


@given(st.text(max_size=200))
def test_any_text_gives_a_verdict_or_none_and_never_raises(text):
    assert parse_verdict(text) in (True, False, None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "the answer looks right",
        '{"correct": "maybe"}',
        '{"score": 1}',
        '{"correct": tru',
        "correct: true",
        '{"correct": [true]}',
    ],
)
def test_output_without_a_readable_verdict_is_invalid(text):
    assert parse_verdict(text) is None
    assert verdict_of(text) == Verdict(False, "invalid")


def test_verdict_match_grades_a_judge_against_the_label():
    assert VerdictMatch().judge("", 'got:1,want:1,{"correct":true}', "true") == Verdict(True, "agree")
    assert VerdictMatch().judge("", 'got:1,want:2,{"correct":true}', "false") == Verdict(False, "disagree")
    assert VerdictMatch().judge("", "got:1,want:2,{", "false") == Verdict(False, "invalid")


# ---------------------------------------------------------------- judging shards


@pytest.fixture(scope="module")
def rm_shards(tmp_path_factory) -> Path:
    """Small judging shards written by the real tools/make_rm_shards.py."""
    out = tmp_path_factory.mktemp("rm_shards")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools/make_rm_shards.py"),
            "--out",
            str(out),
            "--train",
            "600",
            "--heldout",
            "120",
            "--records-per-shard",
            "300",
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return out


def records(rm_shards: Path, split: str) -> list[dict]:
    return list(read_records(sorted(str(p) for p in rm_shards.glob(f"{split}-*.tar.gz")), split_by_rank=False))


def test_judging_shards_are_labelled_by_the_rule_balanced_and_split_by_question(rm_shards):
    train, heldout = records(rm_shards, "train"), records(rm_shards, "heldout")
    assert (len(train), len(heldout)) == (600, 120)
    assert not {r["question"] for r in train} & {r["question"] for r in heldout}
    rule = FinalAnswerMatch("A:")
    for r in train + heldout:
        assert r["correct"] == rule(r["response"], r["reference"])
        assert parse_verdict(r["solution"]) is r["correct"]  # the GenRM's SFT target carries the label
        assert r["prompt"].startswith(r["question"]) and r["prompt"].endswith("|judge:")
    assert 0.35 < sum(r["correct"] for r in train) / len(train) < 0.65
    assert {r["kind"] for r in train} == {"teacher", "near_miss", "guess", "truncated", "bare"}


def test_a_record_without_a_label_is_a_clear_error():
    with pytest.raises(ValueError, match=r"missing \['correct'\]"):
        judging_batch([{"question": "Q:1+1=", "reference": "2", "response": "A:2"}])


def test_a_template_the_tokenizer_cannot_spell_is_a_clear_error(alphabet):
    with pytest.raises(ValueError, match=r"ScalarRMModule.prompt_template: .*cannot encode"):
        ScalarRMModule(TinyQwen2(alphabet, **SMALL))  # the policy's alphabet lacks the template's letters


# ---------------------------------------------------------------- the scalar RM


def test_scalar_rm_loss_falls_on_real_records(rm_shards):
    """The real module on one fixed batch of 32 real records, revisited 40 steps: the loss must fall."""
    module = ScalarRMModule(TinyQwen2(JUDGE_ALPHABET, **SMALL), optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    module.configure_model()
    batch = judging_batch(records(rm_shards, "train")[:32])

    def loss() -> float:
        with torch.no_grad():
            return torch.nn.functional.binary_cross_entropy_with_logits(module.logits(batch), batch.correct).item()

    before = loss()
    trainer = Trainer(
        max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, train_dataloaders=DataLoader([batch] * 40, batch_size=None))
    assert before > 0.6 and loss() < 0.5 * before, (before, loss())


@pytest.fixture(scope="module")
def scalar_run(tmp_path_factory, rm_shards) -> Path:
    """conf/tiny_rm_scalar.yaml through the real CLI, small, in a scratch working directory."""
    cwd = tmp_path_factory.mktemp("rm_run")
    args = [
        f"--data.init_args.train_shards={rm_shards}/train-*.tar.gz",
        f"--data.init_args.heldout_shards={rm_shards}/heldout-*.tar.gz",
        "--data.init_args.steps=6",
        "--data.init_args.examples_per_step=16",
        "--data.init_args.heldout_prompts=40",
        "--trainer.val_check_interval=3",
        "--trainer.log_every_n_steps=1",
    ]
    args += [f"--model.init_args.model.init_args.{key}={value}" for key, value in SMALL.items()]
    result = subprocess.run(
        [sys.executable, "-m", "k15", "fit", "-c", str(CONF / "tiny_rm_scalar.yaml"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


@pytest.mark.slow
def test_scalar_rm_recipe_logs_heldout_metrics_and_exports_a_classifier(scalar_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(scalar_run / "runs/rm_scalar/version_0"))
    events.Reload()
    logged = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
    for tag in ("train/loss", "heldout/accuracy", "heldout/auc", "heldout/loss", "heldout/positive_rate"):
        assert tag in logged, tag
    assert len(logged["heldout/auc"]) == 2 and 0.0 <= logged["heldout/auc"][-1].value <= 1.0
    model = AutoModelForSequenceClassification.from_pretrained(scalar_run / "runs/rm_scalar/hf")
    assert model.config.num_labels == 1 and model.config.hidden_size == SMALL["hidden_size"]


@pytest.mark.slow
def test_scalar_rm_judges_a_batch_the_same_as_one_at_a_time(scalar_run, rm_shards):
    judge = ScalarRM(str(scalar_run / "runs/rm_scalar/hf"))
    rows = records(rm_shards, "heldout")[:48]
    questions, responses, references = (
        [r["question"] for r in rows],
        [r["response"] for r in rows],
        [r["reference"] for r in rows],
    )
    verdicts = judge.judge_many(questions, responses, references)
    assert len(verdicts) == 48 and all(isinstance(v, Verdict) and v.reason in ("accept", "reject") for v in verdicts)
    batched = judge.scores(questions, responses, references)
    alone = torch.cat(
        [judge.scores([q], [c], [a]) for q, c, a in zip(questions[:6], responses[:6], references[:6], strict=True)]
    )
    assert torch.allclose(batched[:6], alone, atol=1e-5)  # right padding: a row's score ignores its batch
    assert [v.correct for v in verdicts] == (batched >= 0.5).tolist()
    assert judge.judge_many([], [], []) == []
    assert not any(p.requires_grad for p in judge.parameters())
    reward = RewardModule(verifier=judge)
    assert any(m is judge for m in reward.modules())  # a submodule: Lightning moves it with the policy
    assert not reward.train().verifier.training  # and it stays in eval mode when its owner trains


# ---------------------------------------------------------------- the generative RM


def test_an_untrained_genrm_gives_counted_invalid_verdicts(tmp_path):
    source = TinyQwen2(JUDGE_ALPHABET, **SMALL)
    source.model().save_pretrained(tmp_path)
    source.tokenizer().save_pretrained(tmp_path)
    judge = GenerativeRM(Pretrained(str(tmp_path)), max_new_tokens=8)
    verdicts = judge.judge_many(["Q:1+2=", "Q:5+5="] * 3, ["1+2+0=3,A:3", "A:11"] * 3, ["3", "10"] * 3)
    assert verdicts == [Verdict(False, "invalid")] * 6 and judge.take_counts() == {"invalid": 6}
    assert judge.judge("Q:1+2=", "A:3", "3") == Verdict(False, "invalid") and judge.take_counts() == {"invalid": 1}
    assert len(judge.outputs(["Q:1+2="], ["A:3"], ["3"])[0]) <= 8  # greedy text within the budget, not a crash
    assert judge.judge_many([], [], []) == []


# ---------------------------------------------------------------- the overlays


@pytest.mark.parametrize(
    ("overlay", "judge"),
    [
        ("scalar_rm.yaml", "k15.reward.scalar_rm.ScalarRM"),
        ("generative_rm.yaml", "k15.reward.generative_rm.GenerativeRM"),
    ],
)
def test_the_reward_model_overlay_parses_on_the_rl_recipe(overlay, judge):
    config = yaml.safe_load(printed_config("-c", str(CONF / "tiny.yaml"), "-c", str(CONF / "reward" / overlay)))
    assert config["model"]["init_args"]["reward"]["init_args"]["verifier"]["class_path"] == judge
