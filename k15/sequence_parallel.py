"""Ulysses sequence parallelism: each packed row a model scores is split over P ranks, its
attention exact.

A packed row (``k15.packing``) of S tokens is padded to S' = P·L, L = ⌈S/P⌉, and rank r runs
positions [r·L, (r+1)·L) through the model (``k15.logprobs.token_scores`` does the split). Every
part of a decoder layer but attention works token by token, so it runs on the local L tokens as
is; rotary embeddings need only each token's position, which the rank is given. In attention, an
all-to-all over the P ranks trades the sequence split for a head split:

    q, k, v  [B, H, L, d]    (this rank's positions, all heads)
          →  [B, H/P, S', d] (every position, heads [r·H/P, (r+1)·H/P))

Each rank attends over the whole row for its heads — within each document, as ``packed_sdpa``
does for one process (documents from the whole row's ``position_ids``, gathered from the ranks) —
then a second all-to-all trades back. Query head h reads key/value head ⌊h·H_kv/H⌋, so rank r's
query heads read exactly its H_kv/P key/value heads: P must divide H and H_kv. Autograd runs the
all-to-alls backwards as all-to-alls.

Why Ulysses rather than ring attention: it wraps transformers' attention interface unchanged
(every other layer of any HF decoder runs as is), its cost is two all-to-alls of q, k, v per layer
(O(S·H·d / P) per rank, independent of P on a fast interconnect), and within a node — where
k15's SP group lives, beside data parallel — that is cheaper than P ring steps. Its limit is
P ≤ H_kv (Qwen2.5-7B: 4); rings would go further, at the price of their own attention kernel.

The split is switched on for good (``enable_sequence_parallel``): activation checkpointing
recomputes layers during backward, where a forward-time switch would be off. A model with it on
treats every forward without a padding mask and without a KV cache as its rank's part of one
packed row; padded batches and cached generation attend as plain sdpa.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed._functional_collectives import all_gather_single_autograd, all_to_all_single_autograd
from transformers import AttentionInterface, PreTrainedConfig
from transformers.masking_utils import AttentionMaskInterface

from k15.packing import packed_sdpa, packed_sdpa_mask

ULYSSES = "k15_ulysses"

# The process's sequence-parallel group (a process is in one); None: off.
_group: dist.ProcessGroup | None = None


def check_heads(config: PreTrainedConfig, degree: int) -> None:
    """Raise unless ``degree`` divides both head counts (each rank takes H/P query, H_kv/P key heads)."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads % degree or kv_heads % degree:
        raise ValueError(
            f"sequence parallel degree {degree} must divide num_attention_heads ({heads}) and "
            f"num_key_value_heads ({kv_heads}): each rank attends with 1/{degree} of the heads"
        )


def enable_sequence_parallel(model: nn.Module, group: dist.ProcessGroup) -> None:
    """Split every packed row ``model`` scores over ``group`` (all its ranks score the same rows)."""
    global _group
    text = model.config.get_text_config()
    check_heads(text, dist.get_world_size(group))
    _group = group
    text._attn_implementation = ULYSSES


def split_of(model: nn.Module) -> tuple[int, int]:
    """(P, r): the degree of the split of ``model``'s packed rows and this rank's part ((1, 0): none)."""
    if model.config.get_text_config()._attn_implementation != ULYSSES:
        return 1, 0
    return dist.get_world_size(_group), dist.get_rank(_group)


def gather_parts(values: Tensor) -> Tensor:
    """Every rank's [L] part → the row's [P·L], differentiably: the gradient of each part is the sum
    over ranks of theirs. So when every rank computes the same loss from the gathered row, a rank's
    gradients are P × its part's share, and FSDP's mean over the P ranks gives the whole row's."""
    return all_gather_single_autograd(values, gather_dim=0, group=_group)


def _sequence_to_heads(x: Tensor, degree: int) -> Tensor:
    """[B, H, L, d] (this rank's positions) → [B, H/P, P·L, d] (this rank's heads)."""
    b, h, n, d = x.shape
    send = x.reshape(b, degree, h // degree, n, d).transpose(0, 1).contiguous()  # block j: rank j's heads
    received = all_to_all_single_autograd(send, None, None, _group)  # block i: rank i's positions
    return received.permute(1, 2, 0, 3, 4).reshape(b, h // degree, degree * n, d)


def _heads_to_sequence(x: Tensor, degree: int) -> Tensor:
    """[B, H/P, P·L, d] (this rank's heads) → [B, H, L, d] (this rank's positions)."""
    b, h, s, d = x.shape
    send = x.reshape(b, h, degree, s // degree, d).permute(2, 0, 1, 3, 4).contiguous()  # block j: rank j's positions
    received = all_to_all_single_autograd(send, None, None, _group)  # block i: rank i's heads
    return received.transpose(0, 1).reshape(b, h * degree, s // degree, d)


def ulysses_attention(module: nn.Module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """transformers' attention interface: q [1, H, L, d], k, v [1, H_kv, L, d] of this rank's part
    of a packed row → [1, L, H, d] (as ``sdpa_attention_forward`` returns it), attending over the
    whole row. Padded or cached inputs: plain sdpa."""
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return packed_sdpa(module, query, key, value, attention_mask, position_ids=position_ids, **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise ValueError(f"{ULYSSES}: sliding-window attention is not supported")
    degree = dist.get_world_size(_group)
    positions = torch.empty(degree * position_ids.shape[1], dtype=position_ids.dtype, device=position_ids.device)
    dist.all_gather_single(positions, position_ids[0].contiguous(), group=_group)
    q, k, v = (_sequence_to_heads(x, degree) for x in (query, key, value))
    out, _ = packed_sdpa(module, q, k, v, None, position_ids=positions[None], **kwargs)  # [1, S', H/P, d]
    return _heads_to_sequence(out.transpose(1, 2), degree).transpose(1, 2).contiguous(), None


AttentionInterface.register(ULYSSES, ulysses_attention)
AttentionMaskInterface.register(ULYSSES, packed_sdpa_mask)
