"""DPO (k1.5 §2.4): the loss against its formula and its limits, and a real run through the CLI that
must move the policy's preference toward the chosen responses."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from k15_cli import CONF, data_args, exported_weights, k15, scalars
from transformers import AutoModelForCausalLM

from k15.data.encode import EncodedPrompt
from k15.data.preference import PREFERENCE_FIELDS, preference_batch
from k15.data.sft import IGNORE_INDEX, sft_row
from k15.data.shards import read_records, shard_urls, write_shards
from k15.dpo import DPOModule, dpo_loss, sequence_logprobs
from k15.logprobs import token_logprobs
from k15.models import Pretrained

pairs = st.integers(1, 6)


def case(seed: int, B: int, spread: float = 20.0):
    """[B] sequence log-probs (≤ 0) of the policy and the reference for y_w and y_l, float64."""
    g = torch.Generator().manual_seed(seed)
    return [-spread * torch.rand(B, generator=g, dtype=torch.float64) for _ in range(4)]


@settings(max_examples=100, deadline=None)
@given(B=pairs, beta=st.floats(0.01, 5.0), seed=st.integers(0, 2**31))
def test_loss_equals_its_formula(B, beta, seed):
    pw, pl, rw, rl = case(seed, B)
    terms = dpo_loss(pw, pl, rw, rl, beta)
    by_hand = [-math.log(1 / (1 + math.exp(-beta * ((pw[b] - rw[b]) - (pl[b] - rl[b])).item()))) for b in range(B)]
    assert terms.loss.item() == pytest.approx(sum(by_hand) / B, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(terms.chosen_rewards, beta * (pw - rw))
    torch.testing.assert_close(terms.rejected_rewards, beta * (pl - rl))


@settings(max_examples=50, deadline=None)
@given(B=pairs, beta=st.floats(0.01, 5.0), seed=st.integers(0, 2**31))
def test_at_the_reference_the_loss_is_log_2(B, beta, seed):
    _, _, rw, rl = case(seed, B)
    assert dpo_loss(rw.clone(), rl.clone(), rw, rl, beta).loss.item() == pytest.approx(math.log(2), rel=1e-12)


@settings(max_examples=100, deadline=None)
@given(B=pairs, beta=st.floats(0.01, 5.0), seed=st.integers(0, 2**31))
def test_gradient_pushes_chosen_up_and_rejected_down(B, beta, seed):
    """∂L/∂log π_θ(y_w) = −β σ(−βm)/B < 0 and ∂L/∂log π_θ(y_l) = +β σ(−βm)/B > 0, m the log-ratio margin:
    a gradient step raises the chosen response's log-prob and lowers the rejected one's."""
    pw, pl, rw, rl = case(seed, B, spread=2.0)
    pw.requires_grad_(True)
    pl.requires_grad_(True)
    dpo_loss(pw, pl, rw, rl, beta).loss.backward()
    weight = beta * torch.sigmoid(-beta * ((pw - rw) - (pl - rl))).detach() / B
    torch.testing.assert_close(pw.grad, -weight)
    torch.testing.assert_close(pl.grad, weight)
    assert (pw.grad < 0).all() and (pl.grad > 0).all()


@settings(max_examples=50, deadline=None)
@given(B=pairs, seed=st.integers(0, 2**31))
def test_small_beta_is_log_2_minus_half_the_margin_and_large_margins_stay_finite(B, seed):
    """L = log 2 − βm/2 + O(β²m²) (Taylor at 0; mean over pairs); and −log σ never overflows."""
    pw, pl, rw, rl = case(seed, B)
    margin = ((pw - rw) - (pl - rl)).mean().item()
    for beta in (1e-3, 1e-5):
        loss = dpo_loss(pw, pl, rw, rl, beta).loss.item()
        assert abs(loss - (math.log(2) - beta * margin / 2)) <= beta**2 * 40.0**2 / 8 + 1e-12
    huge = torch.full((B,), 1e4, dtype=torch.float64)
    assert dpo_loss(huge, -huge, 0 * huge, 0 * huge, 1.0).loss.item() == 0.0  # right by a mile: no loss
    assert dpo_loss(-huge, huge, 0 * huge, 0 * huge, 1.0).loss.item() == pytest.approx(2e4)  # wrong: finite


def test_sequence_logprobs_sum_the_response_tokens_only():
    logp = torch.tensor([[0.0, -1.0, -2.0, -4.0], [0.0, -8.0, -16.0, 0.0]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, 8, IGNORE_INDEX]])
    assert sequence_logprobs(logp, labels).tolist() == [-6.0, -24.0]


def test_beta_must_be_positive(tiny_dir):
    with pytest.raises(ValueError, match="model.beta must be > 0, got 0"):
        DPOModule(Pretrained(str(tiny_dir)), beta=0.0)


# ---- a real run ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair_shards(shard_dir, tmp_path_factory):
    """Pairs from real prompt records: y_w the record's solution; y_l the same with a wrong final
    answer (even records) or with its steps written twice, 2× longer (odd records)."""
    out = tmp_path_factory.mktemp("pairs")
    pairs = []
    for n, record in enumerate(read_records(shard_urls(f"{shard_dir}/train-*.tar.gz"), split_by_rank=False)):
        steps, _, answer = record["solution"].rpartition("A:")
        rejected = f"{steps}A:{answer}9" if n % 2 == 0 else f"{steps}{steps}A:{answer}"
        prompt = {key: record[key] for key in ("prompt", "answer", "difficulty")}
        pairs.append(prompt | {"chosen": record["solution"], "rejected": rejected})
    write_shards(pairs, str(out / "train-%06d.tar.gz"), records_per_shard=100)
    return out


def preference_margins(model_dir, records: list[dict]) -> torch.Tensor:
    """[B] log π(y_w | x) − log π(y_l | x) under the model saved in ``model_dir``."""
    source = Pretrained(str(model_dir))
    tokenizer, model = source.tokenizer(), source.model().eval()
    rows = [
        tuple(
            sft_row(EncodedPrompt(tokenizer(r["prompt"])["input_ids"]), r[side], tokenizer)
            for side in ("chosen", "rejected")
        )
        for r in records
    ]
    batch = preference_batch(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        logp = sequence_logprobs(token_logprobs(model, batch.input_ids, batch.attention_mask), batch.labels)
    chosen, rejected = logp.chunk(2)
    return chosen - rejected


@pytest.mark.slow
def test_dpo_cli_run_moves_the_preference_toward_chosen_and_exports(tiny_dir, shard_dir, pair_shards, tmp_path):
    k15(
        "fit", "-c", str(CONF / "tiny_dpo.yaml"), *data_args(shard_dir),
        f"--data.init_args.train_shards={pair_shards}/train-*.tar.gz",
        f"--model.init_args.model.init_args.path={tiny_dir}",
        "--model.init_args.optimizer.init_args.lr=3e-3", "--model.init_args.heldout_max_new_tokens=16",
        "--data.init_args.pairs_per_step=8", "--data.init_args.steps=6",
        "--trainer.val_check_interval=6", "--trainer.log_every_n_steps=1",
        cwd=tmp_path,
    )  # fmt: skip
    logged = scalars(tmp_path / "runs/tiny_dpo/version_0")
    loss = [s.value for s in logged["train/dpo_loss"]]
    margin = [s.value for s in logged["train/reward_margin"]]
    accuracy = [s.value for s in logged["train/preference_accuracy"]]
    assert len(loss) == 6 and "heldout/accuracy" in logged
    # step 0 runs at π_θ = π_ref: no margin, no pair ranked right yet, L = log 2
    assert loss[0] == pytest.approx(math.log(2), abs=1e-5) and abs(margin[0]) < 1e-5 and accuracy[0] == 0.0
    assert margin[-1] > 0 and accuracy[-1] > 0.5 and loss[-1] < loss[0], (loss, margin, accuracy)

    # the exported policy prefers y_w over y_l more than the starting one did, on the training pairs
    records = list(read_records(shard_urls(f"{pair_shards}/train-*.tar.gz"), fields=PREFERENCE_FIELDS))[:64]
    gained = preference_margins(tmp_path / "runs/tiny_dpo/hf", records) - preference_margins(tiny_dir, records)
    assert gained.mean() > 0 and (gained > 0).float().mean() > 0.5, gained
    start = AutoModelForCausalLM.from_pretrained(tiny_dir).state_dict()
    exported = exported_weights(tmp_path / "runs/tiny_dpo/hf")
    assert any(not torch.equal(exported[key], start[key]) for key in exported)
