"""Ulysses sequence parallelism (k15/sequence_parallel.py) against one process, in float64.

Rows of 6, 9 and 4 tokens packed into one of 19 (degree 2 pads one; the second row and a target
straddle the ranks' boundary), and one row of 7, through a tiny Qwen2 with grouped-query attention.
Degree 2 on two gloo processes against degree 1: log-probs, entropies and the gradient of
Σ_t w_t log π_t, with and without activation checkpointing; then a whole RL update under FSDP2
sharded over the same two ranks against the single-process update.
"""

from datetime import timedelta

import pytest
import torch
from test_update import ROLLOUT_ARGS, rollout_of

from k15.finite import FiniteGuard
from k15.logprobs import token_scores
from k15.losses import KimiLoss
from k15.models import TinyQwen2
from k15.sequence_parallel import check_heads, enable_sequence_parallel
from k15.update import update_policy

SHAPE = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
ROWS = {"packed": (6, 9, 4), "one": (7,)}
TAU = 0.7


def policy(alphabet: str, **shape) -> torch.nn.Module:
    return TinyQwen2(alphabet, **{**SHAPE, **shape}).model().double()


def batch(vocab: int, lengths: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded rows of ``lengths``: input ids, attention mask, weights w_t (0 on padding)."""
    g = torch.Generator().manual_seed(len(lengths))
    width = max(lengths)
    ids = torch.randint(4, vocab, (len(lengths), width), generator=g)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids, mask, torch.randn(ids.shape, generator=g, dtype=torch.float64) * mask


def scores_and_gradients(model, rows) -> tuple[torch.Tensor, torch.Tensor, dict]:
    ids, mask, weights = rows
    model.zero_grad()
    scores = token_scores(model, ids, mask, temperature=TAU, chunk_tokens=4)
    (weights * scores.logp).sum().backward()
    return scores.logp.detach(), scores.entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _scores_on_rank(rank: int, folder: str, alphabet: str, results) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2, timeout=timedelta(minutes=2)
    )
    model = policy(alphabet)
    enable_sequence_parallel(model, dist.group.WORLD)
    out = {}
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.train()
        for name, lengths in ROWS.items():
            logp, entropy, grads = scores_and_gradients(model, batch(model.config.vocab_size, lengths))
            for grad in grads.values():  # what FSDP's reduce-scatter does: the mean over the ranks
                dist.all_reduce(grad)
                grad /= 2
            out[name, checkpointing] = logp, entropy, grads
    try:
        enable_sequence_parallel(policy(alphabet, num_kv_heads=1), dist.group.WORLD)
    except ValueError as error:
        out["error"] = str(error)
    results[rank] = out
    dist.destroy_process_group()


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_degree_two_scores_and_differentiates_as_one_process(alphabet, tmp_path):
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_scores_on_rank, args=(str(tmp_path), alphabet, results), nprocs=2)
    model = policy(alphabet)
    for name, lengths in ROWS.items():
        logp, entropy, expected = scores_and_gradients(model, batch(model.config.vocab_size, lengths))
        assert (logp != 0).sum() == sum(n - 1 for n in lengths)  # every token after a row's first is scored
        for rank in (0, 1):
            for checkpointing in (False, True):
                sp_logp, sp_entropy, sp_grads = results[rank][name, checkpointing]
                torch.testing.assert_close(sp_logp, logp, rtol=1e-9, atol=1e-12)
                torch.testing.assert_close(sp_entropy, entropy, rtol=1e-9, atol=1e-12)
                for key, grad in sp_grads.items():
                    torch.testing.assert_close(grad, expected[key], rtol=1e-9, atol=1e-12, msg=f"{name} {key}")
    for rank in (0, 1):
        assert "degree 2" in results[rank]["error"] and "num_key_value_heads (1)" in results[rank]["error"]


def _update_on_rank(rank: int, folder: str, alphabet: str, results) -> None:
    """FSDP2 over both ranks, which split every packed row between them (dp 1 × sp 2): the whole rollout."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from k15.language_module import shard_decoder

    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2, timeout=timedelta(minutes=2)
    )
    model = policy(alphabet).train()
    enable_sequence_parallel(model, dist.group.WORLD)
    shard_decoder(model, init_device_mesh("cpu", (2,)))
    stats = update_policy(
        model,
        rollout_of(*ROLLOUT_ARGS),
        KimiLoss(0.5),
        torch.optim.SGD(model.parameters(), lr=0.5),
        None,
        generator=torch.Generator().manual_seed(0),
        guard=FiniteGuard(3),
        max_tokens_per_micro_batch=24,
    )
    weights = {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}
    results[rank] = weights, float(stats.step_losses[0])
    dist.destroy_process_group()


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_an_update_with_sequence_parallel_fsdp2_equals_one_process(alphabet, tmp_path):
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_update_on_rank, args=(str(tmp_path), alphabet, results), nprocs=2)
    single = policy(alphabet).train()
    stats = update_policy(
        single,
        rollout_of(*ROLLOUT_ARGS),
        KimiLoss(0.5),
        torch.optim.SGD(single.parameters(), lr=0.5),
        None,
        generator=torch.Generator().manual_seed(0),
        guard=FiniteGuard(3),
        max_tokens_per_micro_batch=24,
    )
    before = dict(policy(alphabet).named_parameters())
    expected = dict(single.named_parameters())
    for rank in (0, 1):
        weights, loss = results[rank]
        assert abs(loss - float(stats.step_losses[0])) < 1e-12
        for name, weight in weights.items():
            torch.testing.assert_close(weight, expected[name].detach(), rtol=1e-9, atol=1e-12, msg=name)
    assert any(not torch.equal(before[name], expected[name]) for name in expected)  # it did move


@pytest.mark.timeout(30)
def test_degree_must_divide_the_head_counts(alphabet):
    config = policy(alphabet).config
    check_heads(config, 2)
    with pytest.raises(ValueError, match=r"degree 4 .* num_attention_heads \(4\) and num_key_value_heads \(2\)"):
        check_heads(config, 4)


def test_a_group_trains_on_the_union_of_its_ranks_rollouts():
    """``concat_rollouts``: rows of different widths right-padded alike, prompts in rank order,
    rewards and reasons joined, a rank without a rollout skipped."""
    from k15.rollout.batch import concat_rollouts

    a, b = rollout_of([5, 2, 7, 3, 1, 6, 4, 2], [[1.0, 0, 0, 1], [0, 0, 1, 0]]), rollout_of([1] * 8, [[0.0] * 4] * 2)
    union = concat_rollouts([a, None, b])
    assert union.input_ids.shape == (16, a.input_ids.shape[1])
    assert torch.equal(union.input_ids[:8], a.input_ids) and torch.equal(union.input_ids[8:, :4], b.input_ids)
    assert union.attention_mask[8:, 4:].sum() == 0 and (union.versions[8:, 4:] == -1).all()
    assert union.rewards.total.shape == (4, 4) and len(union.rewards.reasons["correct"]) == 16
    assert concat_rollouts([None, a]) is a and concat_rollouts([None, None]) is None
