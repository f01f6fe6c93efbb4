"""Per-token log-probabilities and entropies under a causal LM, never holding [T, V] logits at once.

For every position t ≥ 1 with hidden state h_{t−1} (the decoder's output, after its final norm),
head weight W [V, H] (and bias b), temperature τ:

    z_t   = (W h_{t−1} + b) / τ                                   the sampling distribution's logits
    log π(y_t | y_<t) = z_t[y_t] − logsumexp(z_t)
    H_t   = −Σ_v p_v log p_v = logsumexp(z_t) − Σ_v p_v z_t[v]     p = softmax(z_t)

The logits of a long sequence are its largest tensor by far: T = 128k tokens × V = 152,064 is
~80 GB in fp32, against ~1 MB a token of hidden states for a 7B model. So the head runs in chunks
of ``chunk_tokens`` positions inside one autograd function that keeps only h, W and the [T]
logsumexps, and recomputes each chunk's logits in backward:

    ∂log π_t/∂z_t = onehot(y_t) − p        ∂H_t/∂z_t = −p ⊙ (log p + H_t)
    ∂/∂h_{t−1} = W^T (∂/∂z_t) / τ           ∂/∂W += (∂/∂z_t) h_{t−1}^T / τ

Peak extra memory is then a few [chunk_tokens, V] fp32 tensors whatever T. Only positions the
attention mask keeps are computed at all (rows run packed: ``k15.packing``); the others get 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from k15.packing import attend_within_documents, pack_rows, unpack
from k15.sequence_parallel import gather_parts, split_of


class TokenScores(NamedTuple):
    """[N, T] each, aligned with ``input_ids``: position 0 and padding are 0."""

    logp: Tensor  # log π(y_t | y_<t), differentiable
    entropy: Tensor  # H_t of the distribution y_t was drawn from, differentiable


def chunk_rows(n: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, n)) for start in range(0, n, chunk)]


def chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """z = (W h + b) / τ of one chunk: [C, V] fp32, a fresh buffer the caller may change in place."""
    return F.linear(h, weight, bias).float().div_(temperature)


class ChunkedHeadScores(torch.autograd.Function):
    """(h [M, H], W [V, H], b [V] | None, y [M]) → log π [M], H [M]; see the module docstring.

    One exp over each chunk's [C, V] logits in forward and one in backward, and at most two [C, V]
    buffers alive (one when the entropy takes no gradient, as when it is only logged).
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, temperature: float, chunk_tokens: int):
        logp, entropy, lse = (torch.empty(len(h), dtype=torch.float32, device=h.device) for _ in range(3))
        with torch.no_grad():
            for rows in chunk_rows(len(h), chunk_tokens):
                z = chunk_logits(h[rows], weight, bias, temperature)
                top = z.amax(dim=-1, keepdim=True)
                shifted = z.sub_(top)  # z − max, so exp cannot overflow
                e = shifted.exp()
                log_sum = e.sum(dim=-1).log()
                logp[rows] = shifted.gather(-1, targets[rows, None]).squeeze(-1) - log_sum
                # H = log Σe − Σ p (z − max), p = e / Σe; a row dot product, no [C, V] product
                entropy[rows] = log_sum - torch.linalg.vecdot(e, shifted) / log_sum.exp()
                lse[rows] = top.squeeze(-1) + log_sum
        ctx.save_for_backward(h, weight, bias, targets, entropy, lse)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        ctx.set_materialize_grads(False)  # an unused output (the logged-only entropy) costs nothing
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        h, weight, bias, targets, entropy, lse = ctx.saved_tensors
        want_h, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(h) if want_h else None
        # summed over chunks in at least fp32 (bf16 sums would lose the small ones)
        acc = torch.promote_types(weight.dtype, torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if want_bias else None
        if grad_logp is None and grad_entropy is None:
            return grad_h, grad_weight, grad_bias, None, None, None
        for rows in chunk_rows(len(h), ctx.chunk_tokens):
            log_p = chunk_logits(h[rows], weight, bias, ctx.temperature).sub_(lse[rows, None])
            # ∂/∂z = g_logp·(onehot − p) − g_H·p⊙(log p + H), then / τ
            if grad_entropy is None:
                grad_z = log_p.exp_().mul_(-grad_logp[rows, None])  # one buffer: log p becomes p, then ∂/∂z
            else:
                p = log_p.exp()
                factor = log_p.add_(entropy[rows, None]).mul_(grad_entropy[rows, None])
                if grad_logp is not None:
                    factor.add_(grad_logp[rows, None])
                grad_z = p.mul_(factor).neg_()
                del factor
            if grad_logp is not None:
                grad_z.scatter_add_(-1, targets[rows, None], grad_logp[rows, None])
            grad_z.div_(ctx.temperature)
            if want_h:
                grad_h[rows] = grad_z.to(weight.dtype) @ weight
            if want_weight:
                grad_weight.addmm_(grad_z.T.to(acc), h[rows].to(acc))
            if want_bias:
                grad_bias += grad_z.sum(dim=0).to(acc)
        return (
            grad_h,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
            None,
        )


def last_hidden_states(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None, **model_inputs: Tensor
) -> Tensor:
    """The decoder's output [N, T, H] (after the final norm), through the model's own forward so
    that wrappers around it (FSDP2's hooks) run; ``logits_to_keep=1`` keeps the head's work to one
    position instead of T."""
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1, **model_inputs
    )
    return out.hidden_states[-1]


def token_scores(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    **model_inputs: Tensor,
) -> TokenScores:
    """log π(y_t | y_<t) and H_t at every kept position t ≥ 1 of each row's kept tokens.

    The rows run packed into one of S tokens (``k15.packing``: no padding computed, ``position_ids``
    restarting per row, no KV cache, which would make transformers ignore the restarts). With
    sequence parallelism on (``k15.sequence_parallel``: degree P, this rank r) the row is padded
    to S' = P·L and this rank runs positions [r·L, (r+1)·L); the scores are gathered back from the
    ranks, so every rank returns the whole [N, T] (each must call this with the same rows).

    ``temperature``: τ of the distribution the tokens were sampled from (the engine samples from
    logits / τ), so that the update differentiates the policy that acted. ``model_inputs`` are the
    rows' extra forward inputs (a LLaVA model's ``pixel_values``, in row order like the packed
    image tokens).
    """
    attend_within_documents(model)
    packed = pack_rows(input_ids, attention_mask)
    ids, positions = packed.input_ids[0], packed.position_ids[0]
    degree, rank = split_of(model)
    length = -(-len(ids) // degree)
    pad = degree * length - len(ids)
    # padding continues the last row's positions: after every real token, so causality hides it
    ids = torch.cat([ids, ids.new_zeros(pad)])
    positions = torch.cat([positions, positions[-1] + 1 + torch.arange(pad, device=positions.device)])
    # hidden state j scores y = x_{j+1} when that is a real token that does not start a row
    targets = torch.cat([ids[1:], ids.new_zeros(1)])
    scored = torch.cat([positions[1:] > 0, positions.new_zeros(1, dtype=torch.bool)])
    scored[len(packed.input_ids[0]) - 1 :] = False
    mine = slice(rank * length, (rank + 1) * length)
    hidden = last_hidden_states(
        model, ids[None, mine], None, position_ids=positions[None, mine], use_cache=False, **model_inputs
    )[0]
    head = model.get_output_embeddings()
    logp, entropy = ChunkedHeadScores.apply(
        hidden[scored[mine]], head.weight, head.bias, targets[mine][scored[mine]], temperature, chunk_tokens
    )
    scores = []
    for values in (logp, entropy):
        part = values.new_zeros(length)
        part[scored[mine]] = values
        row = gather_parts(part) if degree > 1 else part
        # value j belongs to token j + 1; token 0 of the row has none
        scores.append(unpack(torch.cat([row.new_zeros(1), row[: len(packed.input_ids[0]) - 1]]), packed.kept))
    return TokenScores(*scores)


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    **model_inputs: Tensor,
) -> Tensor:
    """``token_scores``' log π alone: [N, T], 0 at t = 0 and on padding."""
    return token_scores(model, input_ids, attention_mask, temperature, chunk_tokens, **model_inputs).logp


def placeholder_loss(model: nn.Module, device: torch.device, chunk_tokens: int = 1024) -> Tensor:
    """0 · Σ log π of a 2-token row: what a rank with nothing left to score runs, so that it takes
    part in its peers' sharded forward (and backward) — FSDP2's all-gathers and reduce-scatters are
    collectives — and adds nothing to any result."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)  # the compute device (offloaded weights: not theirs)
    return token_logprobs(model, ids, torch.ones_like(ids), chunk_tokens=chunk_tokens).sum() * 0.0
