"""One RL iteration's policy update (k1.5 §2.3.2), as a plain function of the model, the rollout and
the optimizer: no Lightning inside, so a test can hold it against a hand-computed update.

    reset the optimizer state (each iteration is a new mirror-descent problem)
    for each of ``passes`` passes:
        order ← a permutation of the N = P·k trajectories, drawn from ``generator``
        for each step of S rows of ``order``:
            g ← Σ over packed micro-batches mb of ∇[w(mb) · L(θ; mb)]   (one step's gradient)
            L and ‖g‖ finite?  clip g to norm c, optimizer step  :  drop the step (``FiniteGuard``)

π_θi's log-probs (the reference) are an input; ``None`` takes them from the first step's own
forwards, which run at θ = θ_i when that step covers every trajectory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from k15.deepspeed import zero3_gradient_norm, zero3_optimizer
from k15.finite import FiniteGuard
from k15.logprobs import placeholder_loss, token_scores
from k15.losses import KLToInitial, PolicyLoss, kl_estimates, sequence_log_ratio
from k15.off_policy import OffPolicyCorrection, importance_weighted
from k15.packing import token_budget_micro_batches
from k15.rollout.batch import Rollout


@dataclass
class UpdateStats:
    ref_logp: Tensor  # [N, T] log π_θi of every token
    advantages: Tensor  # [N]
    step_losses: list[Tensor]  # one per attempted step
    log_ratios: Tensor  # ℓ_j as each micro-batch's loss saw it (0 on the first pass, where θ = θ_i)
    grad_norms: list[float]  # before clipping, one per attempted step
    skipped_steps: int  # dropped as non-finite
    entropy: Tensor  # mean H_t over the trained tokens of every micro-batch (each at its own θ)
    kl_to_initial: Tensor | None = None  # mean estimate of KL(π_θ ‖ π_init) per trained token, if penalised
    is_weight_mean: Tensor | None = None  # mean importance weight w̃_t per trained token, if corrected
    is_clipped_share: Tensor | None = None  # share of trained tokens whose weight was truncated or masked


def gradient_norm(parameters: list[nn.Parameter], max_norm: float | None) -> Tensor:
    """The gradients' global norm (over every rank's shards), clipping them to ``max_norm`` if set."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if max_norm is None:
        norm = torch.nn.utils.get_total_norm(grads)
    else:
        norm = torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2


def update_policy(
    model: nn.Module,
    rollout: Rollout | None,
    loss: PolicyLoss,
    optimizer: torch.optim.Optimizer,
    ref_logp: Tensor | None,
    *,
    generator: torch.Generator,
    guard: FiniteGuard,
    passes: int = 1,
    trajectories_per_step: int | None = None,
    max_tokens_per_micro_batch: int | None = None,
    gradient_clip_norm: float | None = None,
    reset_optimizer: bool = True,
    scheduler=None,
    backward: Callable[[Tensor], None] = Tensor.backward,
    agree: Callable[[bool], bool] = lambda ok: ok,
    most: Callable[[int], int] = lambda count: count,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    device: torch.device | None = None,
    kl: KLToInitial | None = None,
    init_logp: Tensor | None = None,
    correction: OffPolicyCorrection | None = None,
) -> UpdateStats:
    """Take ``passes`` passes of steps over ``rollout``'s trajectories; see the module docstring.

    Micro-batches hold ≤ ``max_tokens_per_micro_batch`` real tokens, packed into one row
    (``k15.packing``; None: a step's rows in one pass).

    ``backward``, ``agree`` and ``most`` let a strategy take part: Lightning's ``manual_backward``;
    every rank's finite/not-finite decision combined, so sharded ranks step or skip together; the
    largest count over ranks, so that they run equally many steps and micro-batches (a rank with
    fewer runs ``placeholder_loss``). ``rollout`` None: this rank has no trajectories this
    iteration (partial rollouts finished none of its groups) but takes part in its peers' steps.
    ``temperature`` and ``chunk_tokens``: see ``k15.logprobs.token_scores``. ``device``: where the
    computation runs (default: the rollout's, else the parameters'; with CPU offload these differ).
    ``kl``: a β·KL(π_θ ‖ π_init) penalty added to every micro-batch's loss, ``init_logp`` [N, T]
    the initial policy's log-probs of the rollout. ``correction``: importance weights π_θi/μ for the
    tokens, from the rollout's engine log-probs log μ (``k15.off_policy``).
    """
    if device is None:
        device = next(model.parameters()).device if rollout is None else rollout.input_ids.device
    n = 0 if rollout is None else len(rollout.input_ids)
    rows_per_step = trajectories_per_step or max(n, 1)
    reference_from_first_step = ref_logp is None
    if correction is not None and rollout is not None and rollout.engine_logprobs is None:
        raise ValueError("model.off_policy needs the engine's log-prob of every sampled token: this rollout has none")
    if reference_from_first_step:
        if rows_per_step < n:
            raise ValueError("the reference can come from the first step only when that step covers every trajectory")
        ref_logp = torch.zeros((n, 0) if rollout is None else rollout.input_ids.shape, device=device)
    advantages = torch.zeros(0) if rollout is None else loss.advantages(rollout.rewards.total)
    advantages = advantages.to(device)
    raw = getattr(optimizer, "optimizer", optimizer)  # under Lightning's wrapper (which only redirects step)
    if reset_optimizer:
        raw.state.clear()
    parameters = [p for group in raw.param_groups for p in group["params"]]
    lengths = None if rollout is None else rollout.attention_mask.sum(dim=1)
    step_losses, log_ratios, grad_norms, skipped = [], [], [], 0
    entropy_sum = trained_tokens = kl_sum = weight_sum = clipped_sum = torch.zeros((), device=device)
    for _ in range(passes):
        steps = torch.randperm(n, generator=generator).to(device).split(rows_per_step) if n else ()
        for turn in range(most(len(steps))):
            rows = steps[turn] if turn < len(steps) else None
            batches = [] if rows is None else token_budget_micro_batches(lengths, rows, max_tokens_per_micro_batch)
            raw.zero_grad()
            step_loss = torch.zeros((), device=device)
            for part in range(most(len(batches))):
                if part >= len(batches):
                    backward(placeholder_loss(model, device, chunk_tokens))
                    continue
                mb = batches[part]
                width = int(lengths[mb].max())
                ids, mask, in_loss = (
                    rollout.input_ids[mb, :width],
                    rollout.attention_mask[mb, :width],
                    rollout.loss_mask[mb, :width],
                )
                logp, entropy = token_scores(model, ids, mask, temperature, chunk_tokens, **rollout.inputs_for(mb))
                entropy_sum = entropy_sum + (entropy.detach() * in_loss).sum()
                trained_tokens = trained_tokens + in_loss.sum()
                if reference_from_first_step:
                    ref_logp[mb, :width] = logp.detach()
                weighted_logp = logp
                if correction is not None:
                    weights, clipped = correction(ref_logp[mb, :width], rollout.engine_logprobs[mb, :width])
                    weighted_logp = importance_weighted(logp, weights)
                    weight_sum = weight_sum + (weights * in_loss).sum()
                    clipped_sum = clipped_sum + (clipped * in_loss).sum()
                part_loss = loss(
                    weighted_logp, ref_logp[mb, :width], in_loss, advantages[mb]
                ) * loss.micro_batch_weight(in_loss, rollout.loss_mask[rows])
                if kl is not None:
                    init = init_logp[mb, :width]
                    part_loss = part_loss + kl(logp, init, in_loss) * kl.micro_batch_weight(
                        in_loss, rollout.loss_mask[rows]
                    )
                    kl_sum = kl_sum + (kl_estimates(logp.detach(), init, kl.estimator) * in_loss).sum()
                backward(part_loss)
                step_loss += part_loss.detach()
                log_ratios.append(sequence_log_ratio(logp.detach(), ref_logp[mb, :width], in_loss))
            reference_from_first_step = False
            if zero3_optimizer(raw):  # the gradient is in the optimizer's partitions, p.grad is None
                norm = zero3_gradient_norm(raw, gradient_clip_norm)
            else:
                norm = gradient_norm(parameters, gradient_clip_norm)
            step_losses.append(step_loss)
            grad_norms.append(float(norm))
            if guard.allows(step_loss, norm, agree=agree):
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            else:
                skipped += 1
            raw.zero_grad()
    per_token = trained_tokens.clamp(min=1)
    entropy = entropy_sum / per_token
    log_ratios = torch.cat(log_ratios) if log_ratios else torch.zeros(0, device=device)
    kl_mean = None if kl is None else kl_sum / per_token
    weight_mean, clipped_share = (
        (None, None) if correction is None else (weight_sum / per_token, clipped_sum / per_token)
    )
    return UpdateStats(
        ref_logp, advantages, step_losses, log_ratios, grad_norms, skipped, entropy, kl_mean, weight_mean, clipped_share
    )
