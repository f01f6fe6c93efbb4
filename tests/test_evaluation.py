"""Held-out evaluation by sampling (k15/evaluation.py): the estimators against brute force, and
``k15 validate`` end to end (vLLM, and HF generate for an SFT module), JSON against TensorBoard."""

import json
import os
import random
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from k15_cli import CONF, ROOT, k15, scalars

from k15.data.shards import write_shards
from k15.evaluation import (
    Evaluation,
    PromptSamples,
    default_ks,
    evaluate,
    flat_metrics,
    maj_at_k,
    pass_at_k,
    summarize,
    token_stats,
)
from k15.reward import RewardModule, Verdict, Verifier

# ---- the estimators --------------------------------------------------------------------------


def brute_pass_at_k(correct: list[bool], k: int) -> float:
    """The share of the k-subsets of the samples that hold a correct one."""
    subsets = list(combinations(correct, k))
    return sum(any(s) for s in subsets) / len(subsets)


def brute_majority(answers: list, correct: list[bool]) -> bool:
    """The vote, written out: most votes wins, ties go to the answer voted first, None abstains."""
    counts = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    if not counts:
        return False
    top = max(counts.values())
    first = min(i for i, a in enumerate(answers) if a is not None and counts[a] == top)
    return correct[first]


def brute_maj_at_k(answers: list, correct: list[bool], k: int) -> float:
    votes = [brute_majority(answers[b : b + k], correct[b : b + k]) for b in range(0, len(answers) - k + 1, k)]
    return sum(votes) / len(votes)


verdicts = st.lists(st.booleans(), min_size=1, max_size=8)


@given(correct=verdicts, data=st.data())
def test_pass_at_k_equals_enumeration_of_k_subsets(correct, data):
    n, c = len(correct), sum(correct)
    k = data.draw(st.integers(1, n))
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(correct, k), abs=1e-12)


@given(n=st.integers(1, 64), data=st.data())
def test_pass_at_1_is_the_share_correct_and_pass_at_k_rises_with_k(n, data):
    c = data.draw(st.integers(0, n))
    assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
    values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == (1.0 if c else 0.0)  # all n samples: correct iff any is


def test_pass_at_k_stays_finite_where_binomials_overflow_floats():
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)  # C(2000, 1000) ≈ 10^600
    with pytest.raises(ValueError, match="k ≤ n"):
        pass_at_k(4, 1, 5)


answers_and_verdicts = st.lists(
    st.tuples(st.one_of(st.none(), st.sampled_from("abc")), st.booleans()), min_size=1, max_size=8
)


@given(samples=answers_and_verdicts, data=st.data())
def test_maj_at_k_equals_the_vote_written_out(samples, data):
    answers, correct = [a for a, _ in samples], [c for _, c in samples]
    k = data.draw(st.integers(1, len(samples)))
    assert maj_at_k(answers, correct, k) == pytest.approx(brute_maj_at_k(answers, correct, k))


@given(samples=answers_and_verdicts)
def test_maj_at_1_is_pass_at_1_when_every_correct_sample_answers(samples):
    answers = [a if a is not None or not c else "x" for a, c in samples]  # a correct sample gave an answer
    correct = [c for _, c in samples]
    assert maj_at_k(answers, correct, 1) == pytest.approx(pass_at_k(len(correct), sum(correct), 1))


def test_maj_at_k_ties_abstentions_and_leftovers():
    answers, correct = ["1", "2", "2", "1"], [True, False, False, True]
    assert maj_at_k(answers, correct, 4) == 1.0  # 2–2: "1" was voted first
    assert maj_at_k(answers, correct, 2) == 0.5  # blocks ("1", "2") → "1"; ("2", "1") → "2"
    assert maj_at_k([None, None, "3"], [False, False, False], 3) == 0.0
    assert maj_at_k([None, None, "7"], [False, False, True], 3) == 1.0  # the only voter wins
    assert maj_at_k([None, None], [False, False], 2) == 0.0  # nobody answered
    assert maj_at_k(["1", "2", "2", "9", "9"], [True, False, False, False, False], 2) == 0.5  # sample 5 unused


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=50))
def test_token_stats_match_numpy(tokens):
    stats = token_stats(tokens)
    assert stats["tokens_mean"] == pytest.approx(np.mean(tokens))
    assert stats["tokens_median"] == pytest.approx(np.median(tokens))
    assert stats["tokens_p90"] == pytest.approx(np.percentile(tokens, 90))


prompt_samples = st.integers(1, 6).flatmap(
    lambda n: st.lists(
        st.builds(
            PromptSamples,
            difficulty=st.integers(1, 3),
            correct=st.lists(st.booleans(), min_size=n, max_size=n),
            answers=st.lists(st.sampled_from(["1", "2", None]), min_size=n, max_size=n),
            tokens=st.lists(st.integers(1, 100), min_size=n, max_size=n),
        ),
        min_size=1,
        max_size=10,
    )
)


@settings(max_examples=50)
@given(prompts=prompt_samples)
def test_by_difficulty_partitions_the_prompts(prompts):
    n = len(prompts[0].correct)
    ks = default_ks(n)
    result = evaluate(prompts, ks)
    groups = result["by_difficulty"].values()
    assert sum(g["prompts"] for g in groups) == len(prompts) == result["overall"]["prompts"]
    for k in ks:  # the overall mean is the prompt-weighted mean of the groups'
        weighted = sum(g["prompts"] * g[f"pass@{k}"] for g in groups) / len(prompts)
        assert result["overall"][f"pass@{k}"] == pytest.approx(weighted)
    metrics = flat_metrics(result)
    assert metrics["heldout/pass@1"] == result["overall"]["pass@1"]
    for d in result["by_difficulty"]:
        assert metrics[f"heldout/difficulty_{d}/prompts"] == result["by_difficulty"][d]["prompts"]
    assert ("maj@1" not in result["overall"]) and (n == 1 or f"maj@{n}" in result["overall"])
    assert "maj@2" not in summarize(prompts, ks, majority_vote=False)


def test_evaluation_settings_are_checked_by_key():
    assert Evaluation(samples=8).ks == [1, 2, 4, 8] and Evaluation(samples=6, ks=[3]).ks == [1, 3]
    assert default_ks(1) == [1] and default_ks(6) == [1, 2, 4, 6]
    with pytest.raises(
        ValueError, match=r"model\.evaluation\.ks: every k must be in 1\.\.samples \(8\), got \[1, 16\]"
    ):
        Evaluation(samples=8, ks=[1, 16])
    with pytest.raises(ValueError, match=r"model\.evaluation\.samples must be ≥ 1"):
        Evaluation(samples=0)
    with pytest.raises(ValueError, match=r"model\.evaluation\.top_p"):
        Evaluation(top_p=0)
    with pytest.raises(ValueError, match=r"model\.evaluation\.temperature is 0 \(greedy\).*samples: 1"):
        Evaluation(samples=4, temperature=0)  # vLLM refuses n > 1 greedy samples; they would be equal anyway
    assert Evaluation(samples=1, temperature=0).ks == [1]


class Unextracting(Verifier):
    def judge(self, question, completion, answer):
        return Verdict(completion == answer, "match")


def test_majority_vote_needs_a_verifier_that_extracts_answers(alphabet):
    from k15.models import TinyQwen2
    from k15.sft import SFTModule

    source = TinyQwen2(alphabet, hidden_size=32, num_layers=1, num_heads=1, num_kv_heads=1, intermediate_size=32)
    with pytest.raises(ValueError, match=r"model\.evaluation\.majority_vote: the verifier \(Unextracting\)"):
        SFTModule(source, RewardModule(Unextracting()), evaluation=Evaluation())
    SFTModule(source, RewardModule(Unextracting()), evaluation=Evaluation(majority_vote=False))


# ---- end to end ------------------------------------------------------------------------------

HELDOUT = 12
SAMPLES = 6
KS = [1, 2, 4, 6]  # 4 does not divide 6: maj@4 votes over samples 1–4 only


@pytest.fixture(scope="module")
def answering_model(tmp_path_factory, alphabet):
    """A tiny Qwen2 taught 12 held-out prompts' answers to a known share: prompt i's training copies
    are 0–3 of 3 right (``A:<sum>``), the rest wrong (``A:<sum + 1>``) or unmarked (``<sum>``: no
    answer, abstains from the vote), so its samples mix right, wrong and unanswered. Also the
    shards: those 12 prompts held out, and as the (unused) training set."""
    from k15.models import TinyQwen2

    rng, records, texts = random.Random(0), [], []
    for i in range(HELDOUT):
        d = 1 + i % 3
        low, high = (0 if d == 1 else 10 ** (d - 1)), 10**d - 1
        a, b = rng.randint(low, high), rng.randint(low, high)
        prompt, answer = f"Q:{a}+{b}=", str(a + b)
        records.append({"prompt": prompt, "answer": answer, "difficulty": d, "solution": f"A:{answer}"})
        wrong = [f"A:{a + b + 1}", str(a + b)]
        texts += [(prompt, f"A:{answer}" if j < i % 4 else wrong[(i + j) % 2]) for j in range(3)]
    source = TinyQwen2(alphabet, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)
    tokenizer, model = source.tokenizer(), source.model().train()
    rows = [(tokenizer(p)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"]) for p, c in texts]
    width = max(len(p) + len(c) + 1 for p, c in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full_like(ids, -100)
    for r, (p, c) in enumerate(rows):
        ids[r, : len(p) + len(c) + 1] = torch.tensor(p + c + [tokenizer.eos_token_id])
        labels[r, len(p) : len(p) + len(c) + 1] = torch.tensor(c + [tokenizer.eos_token_id])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for _ in range(150):
            loss = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    assert loss < 0.3, float(loss)  # learned: each prompt's answers at their shares
    folder = tmp_path_factory.mktemp("answering")
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    for split in ("train", "heldout"):
        write_shards(records, str(folder / f"{split}-%06d.tar"))
    return folder, records


def validate(folder, cwd, *config: str, env: dict | None = None):
    return k15(
        "validate",
        *config,
        "-c",
        str(CONF / "eval/pass_at_k.yaml"),
        f"--model.init_args.model.init_args.path={folder / 'model'}",
        f"--data.init_args.train_shards={folder}/train-*.tar",
        f"--data.init_args.heldout_shards={folder}/heldout-*.tar",
        f"--data.init_args.heldout_prompts={HELDOUT}",
        "--data.init_args.heldout_prompts_per_batch=5",  # batches of 5, 5, 2: records merge across batches
        f"--model.init_args.evaluation.init_args.samples={SAMPLES}",
        f"--model.init_args.evaluation.init_args.ks={KS}",
        "--model.init_args.evaluation.init_args.max_new_tokens=8",
        cwd=cwd,
        env=env,
    )


def check_evaluation(log_dir, records):
    """validate.json against an independent recomputation from its records, and against TensorBoard."""
    document = json.loads((log_dir / "validate.json").read_text())
    overall, groups, kept = document["overall"], document["by_difficulty"], document["records"]
    assert document["evaluation"] == {
        "samples": SAMPLES,
        "ks": KS,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 0,
        "max_new_tokens": 8,
    }
    assert sorted(r["prompt"] for r in kept) == sorted(r["prompt"] for r in records)  # each once, every batch
    assert overall["prompts"] == sum(g["prompts"] for g in groups.values()) == HELDOUT
    assert overall["samples"] == HELDOUT * SAMPLES
    for r in kept:  # FinalAnswerMatch: correct iff the extracted answer is the reference
        assert r["correct"] == [a == r["reference"] for a in r["answers"]], r
        assert len(r["tokens"]) == SAMPLES and all(t > 0 for t in r["tokens"])
    assert 0 < overall["pass@1"] < overall["pass@6"] <= 1  # a model right on some samples only
    assert any(a is None for r in kept for a in r["answers"])  # and some samples without an answer
    for scope, metrics in [("", overall)] + [(d, g) for d, g in groups.items()]:
        mine = [r for r in kept if scope in ("", str(r["difficulty"]))]
        assert metrics["prompts"] == len(mine)
        for k in KS:
            assert metrics[f"pass@{k}"] == pytest.approx(np.mean([brute_pass_at_k(r["correct"], k) for r in mine]))
            assert metrics[f"pass@{k}"] >= metrics["pass@1"] - 1e-12
            if k > 1:
                votes = [brute_maj_at_k(r["answers"], r["correct"], k) for r in mine]
                assert metrics[f"maj@{k}"] == pytest.approx(np.mean(votes))
        tokens = [t for r in mine for t in r["tokens"]]
        assert metrics["tokens_mean"] == pytest.approx(np.mean(tokens))
        assert metrics["tokens_median"] == pytest.approx(np.median(tokens))
        assert metrics["tokens_p90"] == pytest.approx(np.percentile(tokens, 90))
    logged = scalars(log_dir)
    assert "heldout/accuracy" not in logged  # pass@1 takes its place
    expected = flat_metrics(document)
    assert {tag for tag in logged if tag.startswith("heldout/") and "/verifier/" not in tag} == set(expected)
    for tag, value in expected.items():
        assert [s.step for s in logged[tag]] == [0]
        assert logged[tag][0].value == pytest.approx(value, rel=1e-6), tag  # TensorBoard keeps float32
    return document


@pytest.mark.slow
@pytest.mark.vllm
def test_validate_samples_on_vllm_and_reports_pass_at_k(answering_model, tmp_path):
    """``k15 validate`` of an exported folder (no checkpoint) with the evaluation overlay: samples on
    the policy's vLLM engine, writes validate.json and TensorBoard, both agreeing with a
    recomputation from the JSON's per-prompt records."""
    folder, records = answering_model
    result = validate(folder, tmp_path, "-c", str(CONF / "tiny.yaml"), "-c", str(CONF / "engine/vllm.yaml"))
    assert "sync_dist" not in result.stderr  # the gathered metrics are logged without Lightning's advice
    document = check_evaluation(tmp_path / "runs/tiny/version_0", records)
    assert document["engine"] == "VLLMEngine"
    assert document["model"] == str(folder / "model") and document["ckpt_path"] is None
    assert document["global_step"] == 0


@pytest.mark.slow
def test_validate_of_an_sft_module_samples_with_hf_generate(answering_model, tmp_path):
    """An SFT module has no rollout engine: the evaluation samples with HF generate."""
    folder, records = answering_model
    sft = ["-c", str(CONF / "tiny_sft.yaml"), "--model.init_args.model=k15.models.Pretrained"]
    validate(folder, tmp_path, *sft)
    assert check_evaluation(tmp_path / "runs/tiny_sft/version_0", records)["engine"] == "hf_sample"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_validate_gathers_the_prompts_of_every_rank(answering_model, tmp_path, master_port):
    """Two gloo processes (FSDP2Strategy), each sampling its own 6 held-out prompts (batches of 5
    and 1) with the HF engine: the JSON and TensorBoard hold all 12, each once."""
    folder, records = answering_model
    config = [f"-c={CONF / name}" for name in ("tiny.yaml", "strategy/fsdp2.yaml", "engine/hf.yaml")]
    validate(folder, tmp_path, *config, env=os.environ | {"MASTER_PORT": str(master_port)})
    check_evaluation(tmp_path / "runs/tiny/version_0", records)


def test_report_plots_accuracy_against_response_tokens(tmp_path):
    """tools/report.py: one labelled point per validate JSON, a PNG, and a final JSON line."""
    files = []
    for name, right, tokens in (("short", [True, False], [10, 12]), ("long", [True, True], [40, 44])):
        result = evaluate(
            [PromptSamples(1, right, ["1", "1"], tokens), PromptSamples(2, right, ["2", None], tokens)], [1, 2]
        )
        (tmp_path / f"{name}.json").write_text(json.dumps(result | {"model": name, "ckpt_path": None}))
        files.append(f"{name}={tmp_path / name}.json")
    out = tmp_path / "plot/fig7.png"
    command = [
        sys.executable,
        "tools/report.py",
        *files,
        str(tmp_path / "long.json"),
        "--out",
        str(out),
        "--by-difficulty",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout.splitlines()[-1])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["png"] == str(out)
    points = {(p["label"], p["tokens_mean"], p["pass@1"]) for p in report["points"]}
    assert points == {("short", 11.0, 0.5), ("long", 42.0, 1.0), ("long", 42.0, 1.0)}
    assert len(report["points"]) == 3 and set(report["by_difficulty"]) == {"difficulty 1", "difficulty 2"}
    missing = subprocess.run(
        [*command[:2], files[0], "--metric", "maj@8", "--out", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert missing.returncode != 0 and "no 'maj@8'" in missing.stderr and "maj@2" in missing.stderr


@pytest.mark.slow
def test_fit_with_an_evaluation_summarises_its_pass_at_1_and_tokens(answering_model, tmp_path):
    """During ``fit`` the evaluation runs before training (the sanity pass) and after it; the run's
    summary takes pass@1 and mean tokens from both, as it takes greedy accuracy without one."""
    folder, _ = answering_model
    k15(
        "fit", "-c", str(CONF / "tiny.yaml"), "-c", str(CONF / "engine/hf.yaml"),
        "-c", str(CONF / "eval/pass_at_k.yaml"),
        f"--model.init_args.model.init_args.path={folder / 'model'}",
        f"--data.init_args.train_shards={folder}/train-*.tar",
        f"--data.init_args.heldout_shards={folder}/heldout-*.tar",
        f"--data.init_args.heldout_prompts={HELDOUT}", "--data.init_args.prompts_per_iteration=4",
        "--model.init_args.rollout.init_args.samples_per_prompt=2",
        "--model.init_args.rollout.init_args.max_new_tokens=8",
        "--model.init_args.evaluation.init_args.samples=2", "--model.init_args.evaluation.init_args.max_new_tokens=8",
        "--data.init_args.iterations=1", "--trainer.val_check_interval=1",
        "--trainer.callbacks=[k15.summary.RunSummary]",
        cwd=tmp_path,
    )  # fmt: skip
    log_dir = tmp_path / "runs/tiny/version_0"
    summary, logged = json.loads((log_dir / "summary.json").read_text()), scalars(log_dir)
    accuracy, tokens = logged["heldout/pass@1"], logged["heldout/tokens_mean"]
    assert len(accuracy) == len(tokens) == 2  # the sanity pass, then after iteration 0 (both at step 0)
    assert summary["heldout_acc_before"] == pytest.approx(accuracy[0].value)
    assert summary["heldout_acc_after"] == pytest.approx(accuracy[1].value)
    assert summary["heldout_tokens_before"] == pytest.approx(tokens[0].value, abs=0.01)
    assert summary["heldout_tokens_after"] == pytest.approx(tokens[1].value, abs=0.01)
