"""The policy update (k15/update.py) against updates computed by hand on a real tiny Qwen2.

Each branch of the update — the reference taken from the first step or from a separate pass,
several optimizer steps per pass, length-bucketed micro-batches, gradient clipping, the optimizer
reset, non-finite steps — is held against an independent computation: the REINFORCE form of the
gradient at θ = θ_i (Eq. 3 with ℓ = 0), written out per trajectory, and SGD/Adam's update rule.
"""

import copy

import pytest
import torch

from k15.advantages import mean_baseline_advantages, normalized_advantages
from k15.errors import RunStopped
from k15.finite import FiniteGuard
from k15.logprobs import token_logprobs
from k15.losses import GRPOLoss, KimiLoss
from k15.models import Pretrained
from k15.reward.rewards import Rewards
from k15.rollout.batch import Rollout
from k15.update import update_policy

TAU = 0.5
P, K = 2, 4


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return Pretrained(str(tiny_dir)).model().double().train()


def rollout_of(lengths: list[int], rewards: list[list[float]], prompt: int = 3, vocab: int = 20) -> Rollout:
    """N = P·K right-padded rows: a prompt of ``prompt`` tokens, then a completion of lengths[n] tokens."""
    g = torch.Generator().manual_seed(0)
    n, width = len(lengths), prompt + max(lengths)
    input_ids, attention_mask = torch.zeros(n, width, dtype=torch.long), torch.zeros(n, width, dtype=torch.long)
    versions = torch.full((n, width), -1)
    for row, length in enumerate(lengths):
        input_ids[row, : prompt + length] = torch.randint(4, vocab, (prompt + length,), generator=g)
        attention_mask[row, : prompt + length] = 1
        versions[row, prompt : prompt + length] = 0
    total = torch.tensor(rewards, dtype=torch.float64)
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=(versions >= 0).double(),
        versions=versions,
        rewards=Rewards(total=total, correct=total, parts={"correct": total}, reasons={"correct": ["x"] * n}),
        completion_lengths=torch.tensor(lengths),
        finish_reasons=["stop"] * n,
        texts=[""] * n,
        prompts=["p"] * P,
        keys=[None] * P,
        samples_per_prompt=K,
    )


ROLLOUT_ARGS = ([5, 2, 7, 3, 1, 6, 4, 2], [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])


def sequence_logp(model, rollout: Rollout) -> torch.Tensor:
    """Σ_t log π(y_t) over each row's completion, all rows in one padded forward. → [N]"""
    return (token_logprobs(model, rollout.input_ids, rollout.attention_mask).double() * rollout.loss_mask).sum(1)


def reinforce_gradient(
    model, rollout: Rollout, advantages: torch.Tensor, rows: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """∇ of the k1.5 loss at θ = θ_i, where ℓ_j = 0: −(1/|rows|) Σ_j a_j ∇ log π_θ(y_j) (Eq. 3)."""
    model.zero_grad()
    rows = torch.arange(len(advantages)) if rows is None else rows
    (-(advantages[rows] * sequence_logp(model, rollout)[rows]).mean()).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return grads


def run_update(model, rollout, optimizer, ref_logp=None, seed=0, **kwargs):
    return update_policy(
        model,
        rollout,
        KimiLoss(TAU),
        optimizer,
        ref_logp,
        generator=torch.Generator().manual_seed(seed),
        guard=kwargs.pop("guard", FiniteGuard(3)),
        **kwargs,
    )


def deltas(before, after) -> list[torch.Tensor]:
    return [b.detach() - a.detach() for a, b in zip(before.parameters(), after.parameters(), strict=True)]


def assert_all_close(actual: list[torch.Tensor], expected: list[torch.Tensor], rtol=1e-7, atol=1e-12) -> None:
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("max_tokens_per_micro_batch", [None, 12, 1], ids=["one pass", "buckets", "a row each"])
def test_one_full_step_is_sgd_on_the_reinforce_gradient(policy, max_tokens_per_micro_batch):
    """The reference from the first step's own forwards, any micro-batching: θ' = θ − lr·∇, ∇ by hand."""
    rollout = rollout_of(*ROLLOUT_ARGS)
    model = copy.deepcopy(policy)
    expected = [-0.1 * g for g in reinforce_gradient(model, rollout, mean_baseline_advantages(rollout.rewards.total))]
    before = copy.deepcopy(model)
    stats = run_update(
        model,
        rollout,
        torch.optim.SGD(model.parameters(), lr=0.1),
        max_tokens_per_micro_batch=max_tokens_per_micro_batch,
    )
    assert_all_close(deltas(before, model), expected)
    assert stats.log_ratios.abs().max() == 0  # first (only) pass at θ = θ_i
    in_loss = rollout.loss_mask.bool()
    torch.testing.assert_close(
        stats.ref_logp[in_loss], token_logprobs(before, rollout.input_ids, rollout.attention_mask)[in_loss].float()
    )


def test_a_separate_reference_pass_gives_the_same_first_step(policy):
    rollout = rollout_of(*ROLLOUT_ARGS)
    one, two = copy.deepcopy(policy), copy.deepcopy(policy)
    ref = token_logprobs(policy, rollout.input_ids, rollout.attention_mask).detach()
    run_update(one, rollout, torch.optim.SGD(one.parameters(), lr=0.1))
    run_update(two, rollout, torch.optim.SGD(two.parameters(), lr=0.1), ref_logp=ref)
    assert_all_close(deltas(policy, one), deltas(policy, two), rtol=1e-10, atol=1e-13)


def test_two_steps_per_pass_follow_the_seeded_order_and_the_squared_term(policy):
    """trajectories_per_step = N/2: the first step is REINFORCE on the first half of the seeded
    permutation; the second, at θ₁, is −(1/S) Σ_j (a_j − τ·ℓ_j) ∇ℓ_j with ℓ_j against π_θi."""
    rollout = rollout_of(*ROLLOUT_ARGS)
    n, lr = len(rollout.input_ids), 0.05
    first, second = torch.randperm(n, generator=torch.Generator().manual_seed(7)).split(n // 2)
    a = mean_baseline_advantages(rollout.rewards.total)
    by_hand = copy.deepcopy(policy)
    ref_sequence = sequence_logp(policy, rollout).detach()
    gradient = reinforce_gradient(by_hand, rollout, a, first)
    with torch.no_grad():
        for p, g in zip(by_hand.parameters(), gradient, strict=True):
            p -= lr * g
    ratio = sequence_logp(by_hand, rollout) - ref_sequence  # ℓ_j at θ₁
    (-((a - TAU * ratio).detach() * ratio)[second].mean()).backward()
    with torch.no_grad():
        for p in by_hand.parameters():
            p -= lr * p.grad

    model = copy.deepcopy(policy)
    ref = token_logprobs(policy, rollout.input_ids, rollout.attention_mask).detach()
    stats = run_update(
        model, rollout, torch.optim.SGD(model.parameters(), lr=lr), ref_logp=ref, seed=7, trajectories_per_step=n // 2
    )
    assert_all_close(deltas(policy, model), deltas(policy, by_hand), rtol=1e-6, atol=1e-11)
    assert len(stats.step_losses) == 2 and stats.log_ratios[n // 2 :].abs().max() > 0  # the second step saw θ₁ ≠ θ_i
    with pytest.raises(ValueError, match="first step"):
        run_update(
            copy.deepcopy(policy), rollout, torch.optim.SGD(policy.parameters(), lr=lr), trajectories_per_step=n // 2
        )


def test_a_different_seed_orders_the_steps_differently(policy):
    rollout = rollout_of(*ROLLOUT_ARGS)
    ref = token_logprobs(policy, rollout.input_ids, rollout.attention_mask).detach()
    ends = []
    for seed in (1, 1, 2):
        model = copy.deepcopy(policy)
        run_update(
            model,
            rollout,
            torch.optim.SGD(model.parameters(), lr=0.05),
            ref_logp=ref,
            seed=seed,
            trajectories_per_step=2,
        )
        ends.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(ends[0], ends[1]) and not torch.equal(ends[0], ends[2])


def test_clipping_scales_the_step_to_the_clip_norm(policy):
    rollout = rollout_of(*ROLLOUT_ARGS)
    model = copy.deepcopy(policy)
    gradient = reinforce_gradient(model, rollout, mean_baseline_advantages(rollout.rewards.total))
    norm = torch.cat([g.flatten() for g in gradient]).norm()
    clip = float(norm) / 4
    stats = run_update(model, rollout, torch.optim.SGD(model.parameters(), lr=0.1), gradient_clip_norm=clip)
    assert stats.grad_norms[0] == pytest.approx(float(norm), rel=1e-9)  # logged before clipping
    assert_all_close(deltas(policy, model), [-0.1 * g * clip / (norm + 1e-6) for g in gradient], rtol=1e-6)


@pytest.mark.parametrize("reset", [True, False])
def test_the_optimizer_reset_makes_every_iteration_start_adam_afresh(policy, reset):
    """With the reset, each iteration's first Adam step is −lr·g/(|g| + ε) (m̂ = g, v̂ = g²), the
    second iteration's too; without it, the second iteration continues the first's moments."""
    rollout = rollout_of(*ROLLOUT_ARGS)
    model, lr, eps = copy.deepcopy(policy), 1e-3, 1e-8
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=eps)
    run_update(model, rollout, optimizer, reset_optimizer=reset)
    second = rollout_of(ROLLOUT_ARGS[0], [[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    before = copy.deepcopy(model)
    gradient = reinforce_gradient(model, second, mean_baseline_advantages(second.rewards.total))
    run_update(model, second, optimizer, reset_optimizer=reset)
    fresh = [-lr * g / (g.abs() + eps) for g in gradient]
    if reset:
        assert_all_close(deltas(before, model), fresh, rtol=1e-6, atol=1e-12)
    else:
        assert max(float((d - f).abs().max()) for d, f in zip(deltas(before, model), fresh, strict=True)) > lr / 10


def test_non_finite_steps_are_skipped_counted_and_stop_the_run_after_n_in_a_row(policy):
    rollout = rollout_of(*ROLLOUT_ARGS)
    rollout.rewards.total[0, 0] = float("nan")  # a NaN advantage: loss and gradient NaN
    model, guard = copy.deepcopy(policy), FiniteGuard(3)
    stats = run_update(model, rollout, torch.optim.SGD(model.parameters(), lr=0.1), guard=guard, passes=2)
    assert stats.skipped_steps == 2 and guard.skipped == 2 and guard.in_a_row == 2
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), policy.parameters(), strict=True)
    )  # nothing stepped
    with pytest.raises(RunStopped, match="3 optimizer steps in a row"):
        run_update(model, rollout, torch.optim.SGD(model.parameters(), lr=0.1), guard=guard)
    good = rollout_of(*ROLLOUT_ARGS)
    guard = FiniteGuard(3)
    guard.in_a_row = 2
    run_update(model, good, torch.optim.SGD(model.parameters(), lr=0.1), guard=guard)
    assert guard.in_a_row == 0 and guard.skipped == 0  # a finite step ends the run of bad ones


def test_an_infinite_gradient_with_a_finite_loss_is_skipped(policy):
    rollout = rollout_of(*ROLLOUT_ARGS)
    model, guard = copy.deepcopy(policy), FiniteGuard(3)
    next(model.parameters()).register_hook(lambda grad: grad * float("inf"))
    stats = run_update(model, rollout, torch.optim.SGD(model.parameters(), lr=0.1), guard=guard)
    assert all(torch.isfinite(loss) for loss in stats.step_losses) and stats.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), policy.parameters(), strict=True))


def test_advantages_pinned_to_hand_computed_values():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    assert mean_baseline_advantages(rewards).tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, 0.75, -0.25, -0.25, -0.25]
    # GRPO: (r − r̄) / (population std + 1e-4); std of [1,0,0,0] = √(3)/4
    s = 3**0.5 / 4
    expected = [0.5 / 0.5001, -0.5 / 0.5001, -0.5 / 0.5001, 0.5 / 0.5001, 0, 0, 0, 0]
    expected += [0.75 / (s + 1e-4)] + [-0.25 / (s + 1e-4)] * 3
    torch.testing.assert_close(normalized_advantages(rewards), torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert KimiLoss().advantages(rewards).tolist() == mean_baseline_advantages(rewards).tolist()
    torch.testing.assert_close(GRPOLoss().advantages(rewards), normalized_advantages(rewards))


@pytest.mark.gpu
def test_the_update_on_a_gpu_equals_the_cpu_update(policy):
    """The same update on CUDA: the seeded row order and the finite checks behave alike there."""
    rollout = rollout_of(*ROLLOUT_ARGS)
    cpu, gpu = copy.deepcopy(policy), copy.deepcopy(policy).cuda()
    run_update(
        cpu,
        rollout,
        torch.optim.SGD(cpu.parameters(), lr=0.05),
        trajectories_per_step=4,
        max_tokens_per_micro_batch=12,
        ref_logp=token_logprobs(policy, rollout.input_ids, rollout.attention_mask).detach(),
    )
    on_gpu = rollout_of(*ROLLOUT_ARGS)
    on_gpu.to("cuda")
    run_update(
        gpu,
        on_gpu,
        torch.optim.SGD(gpu.parameters(), lr=0.05),
        trajectories_per_step=4,
        max_tokens_per_micro_batch=12,
        ref_logp=token_logprobs(gpu, on_gpu.input_ids, on_gpu.attention_mask).detach(),
    )
    assert_all_close([p.cpu() for p in deltas(policy, gpu.cpu())], deltas(policy, cpu), rtol=1e-5, atol=1e-9)


def _update_on_rank(rank: int, folder: str, model_dir: str, results, split: str) -> None:
    """One FSDP2 rank: its half of the rollout (one prompt's group), the sharded update.
    ``split``: ``even`` (one micro-batch each), ``uneven`` (rank 0 in micro-batches of ≤ 12
    tokens, rank 1 in one), ``idle`` (rank 1 has no rollout: partial rollouts finished none)."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from k15.language_module import shard_decoder

    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2, timeout=timedelta(minutes=2)
    )
    model = Pretrained(model_dir).model().double().train()
    shard_decoder(model, init_device_mesh("cpu", (2,)))
    rollout = rollout_of(*ROLLOUT_ARGS)
    half = slice(rank * K, (rank + 1) * K)
    mine = Rollout(
        input_ids=rollout.input_ids[half],
        attention_mask=rollout.attention_mask[half],
        loss_mask=rollout.loss_mask[half],
        versions=rollout.versions[half],
        rewards=Rewards(*(rollout.rewards.total[rank : rank + 1],) * 2, {}, {}),
        completion_lengths=rollout.completion_lengths[half],
        finish_reasons=rollout.finish_reasons[half],
        texts=rollout.texts[half],
        prompts=rollout.prompts[rank : rank + 1],
        keys=[None],
        samples_per_prompt=K,
    )

    def most(count: int) -> int:
        count = torch.tensor(count)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return int(count)

    stats = update_policy(
        model,
        None if split == "idle" and rank == 1 else mine,
        KimiLoss(TAU),
        torch.optim.SGD(model.parameters(), lr=0.5),
        None,
        generator=torch.Generator().manual_seed(0),
        guard=FiniteGuard(3),
        agree=lambda ok: ok,
        most=most,
        max_tokens_per_micro_batch=12 if split != "even" and rank == 0 else None,
    )
    weights = {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}
    results[rank] = (weights, float(stats.step_losses[0]), float(stats.entropy))
    dist.destroy_process_group()


@pytest.mark.multiprocess
@pytest.mark.parametrize("split", ["even", "uneven", "idle"])
def test_fsdp2_on_two_ranks_updates_as_one_process(policy, tiny_dir, tmp_path, split):
    """Each rank updates on its own prompt group with the policy sharded by fully_shard; the
    gradients are averaged across ranks, so θ' equals one process's update on both groups.
    The LM head's weight is read outside the model's forward (``k15.logprobs``): this is where
    its gradient must still reach the sharded parameter.

    Ranks with different numbers of micro-batches agree on the most and the others run
    placeholders (else the collectives would hang); an idle rank adds a zero gradient, so θ'
    is then one process's update on rank 0's group at half the learning rate."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_update_on_rank, args=(str(tmp_path), str(tiny_dir), results, split), nprocs=2)
    single, rollout = copy.deepcopy(policy), rollout_of(*ROLLOUT_ARGS)
    if split == "idle":
        rollout = Rollout(
            **{
                **vars(rollout),
                **{key: getattr(rollout, key)[:K] for key in ("input_ids", "attention_mask", "loss_mask", "versions")},
                "rewards": Rewards(*(rollout.rewards.total[:1],) * 2, {}, {}),
            }
        )
    stats = update_policy(
        single,
        rollout,
        KimiLoss(TAU),
        torch.optim.SGD(single.parameters(), lr=0.25 if split == "idle" else 0.5),
        None,
        generator=torch.Generator().manual_seed(0),
        guard=FiniteGuard(3),
    )
    (sharded, loss_0, _), (same, loss_1, _) = results[0], results[1]
    expected = dict(single.named_parameters())
    assert sharded.keys() == expected.keys()
    for name, weight in sharded.items():
        torch.testing.assert_close(weight, same[name], rtol=0, atol=0)  # every rank holds the same θ'
        torch.testing.assert_close(weight, expected[name].detach(), rtol=1e-9, atol=1e-12, msg=name)
    if split == "idle":
        assert loss_1 == 0 and abs(loss_0 - float(stats.step_losses[0])) < 1e-12
    else:
        assert abs((loss_0 + loss_1) / 2 - float(stats.step_losses[0])) < 1e-12  # the mean of the ranks' means
