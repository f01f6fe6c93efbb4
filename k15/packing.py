"""Padding-free packing: the rows of a micro-batch laid end to end in one row, ``position_ids``
restarting at 0 for each, so the forward spends nothing on padding.

    rows (right-padded)        packed (one row, L = Σ lengths)
    a a a a . .                input_ids     a a a a b b c c c
    b b . . . .          →     position_ids  0 1 2 3 0 1 0 1 2
    c c c . . .

Attention must stay within each document. On GPUs ``flash_attention_2`` reads the restarts in
``position_ids`` and runs its varlen kernel: O(Σ T_i²). transformers' ``sdpa``/``eager`` read
them too, but build a block-diagonal [L, L] mask: exact (fp64 log-probs equal per-row ones to
1e-16 here) but O(L²) — on this CPU a 4,096-token pack of a long-tailed batch ran 1.7× slower
than padding it. So an sdpa model is switched to ``packed_sdpa``: exact causal sdpa over each
document's own slice, the CPU analogue of varlen, and plain sdpa on every other input.
(With a KV cache — ``use_cache`` defaults to True — transformers ignores the restarts altogether
and documents would attend to each other: packed forwards pass ``use_cache=False``.)

Micro-batches are built by a token budget: first-fit decreasing, so a long-tailed batch fills
each forward with real tokens (a padded micro-batch pays rows × its longest row instead).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

PACKED_SDPA = "k15_packed_sdpa"


class PackedRows(NamedTuple):
    input_ids: Tensor  # [1, L]
    position_ids: Tensor  # [1, L], 0 at each row's first token
    kept: Tensor  # [N, T] bool: the right-padded positions that were packed, in row-major order


def pack_rows(input_ids: Tensor, attention_mask: Tensor) -> PackedRows:
    """Right-padded rows [N, T] → one packed row of their kept tokens (``unpack`` inverts it)."""
    kept = attention_mask.bool()
    positions = kept.long().cumsum(dim=1) - 1
    return PackedRows(input_ids[kept][None], positions[kept][None], kept)


def unpack(values: Tensor, kept: Tensor) -> Tensor:
    """[L] (or [1, L]) packed values → [N, T] in the rows' layout, 0 at padding (differentiably)."""
    out = torch.zeros(kept.shape, dtype=values.dtype, device=values.device)
    out[kept] = values.reshape(-1)
    return out


def token_budget_micro_batches(lengths: Tensor, rows: Tensor, max_tokens: int | None) -> list[Tensor]:
    """Split ``rows`` (indices into ``lengths``) into micro-batches of ≤ ``max_tokens`` real
    tokens: first-fit decreasing, longest rows first; a row longer than the budget goes alone.
    ``max_tokens`` None: one micro-batch of every row, in the given order."""
    if max_tokens is None:
        return [rows]
    order = rows[lengths[rows].argsort(descending=True, stable=True)]
    bins: list[list[int]] = []
    room: list[int] = []
    for row in order.tolist():
        size = int(lengths[row])
        fit = next((b for b, left in enumerate(room) if left >= size), None)
        if fit is None:
            bins.append([row])
            room.append(max_tokens - size)
        else:
            bins[fit].append(row)
            room[fit] -= size
    return [torch.tensor(b, dtype=rows.dtype, device=rows.device) for b in bins]


def document_bounds(position_ids: Tensor) -> list[tuple[int, int]]:
    """[(start, end)] of each document of a packed row: one starts wherever position t is not t−1's + 1
    (transformers' own rule for packed sequences)."""
    positions = position_ids.reshape(-1)
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[1:] = positions[1:] != positions[:-1] + 1
    edges = starts.nonzero().reshape(-1).tolist() + [len(positions)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def packed_sdpa(module: nn.Module, query, key, value, attention_mask, position_ids=None, **kwargs):
    """transformers' sdpa, except for rows that come without a padding mask and without a KV cache
    (packed rows): causal sdpa within each document of each row, from ``position_ids``.
    ``query`` [B, heads, L, d], ``key``/``value`` [B, kv_heads, L, d] → [B, L, heads, d]."""
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    rows = []
    for r in range(len(query)):
        documents = document_bounds(position_ids[min(r, len(position_ids) - 1)])  # [1, L] may serve every row
        parts = [
            sdpa_attention_forward(
                module, *(x[r : r + 1, :, a:b] for x in (query, key, value)), None, is_causal=True, **kwargs
            )[0]
            for a, b in documents
        ]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows), None


def packed_sdpa_mask(*args, attention_mask=None, **kwargs):
    """sdpa's mask, but none at all where there is no padding mask: ``packed_sdpa`` then reads the
    documents from ``position_ids`` instead of an [L, L] block mask."""
    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


def attend_within_documents(model: nn.Module) -> None:
    """Switch an sdpa model to ``packed_sdpa`` (idempotent). It equals sdpa on every input sdpa
    handles (padded batches, generation with a cache) and keeps packed rows' cost O(Σ T_i²).
    Switched for good, not for one forward: activation checkpointing recomputes layers in backward,
    outside any forward-time scope, and must see the same attention. Other implementations are
    left alone (``flash_attention_2`` already runs packed rows as varlen; ``eager`` builds the
    exact block mask)."""
    text = model.config.get_text_config()  # not a vision tower's: its attention is not causal
    if text._attn_implementation == "sdpa":
        text._attn_implementation = PACKED_SDPA
