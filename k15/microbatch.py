"""Length-bucketed micro-batches: each forward/backward covers rows of similar length, padded only
to its own longest row, within a budget of padded tokens.

A long-tailed batch (most responses short, a few long) padded as one block spends most of its
compute on padding; sorted into buckets it does not, and peak activation memory is bounded.
"""

from __future__ import annotations

from torch import Tensor


def micro_batches(lengths: Tensor, rows: Tensor, max_tokens: int | None) -> list[Tensor]:
    """Split ``rows`` (indices into ``lengths``) into micro-batches of ≤ ``max_tokens`` padded
    tokens (rows × longest row; a row longer than the budget goes alone), longest rows first.
    ``max_tokens`` None: one micro-batch of every row, in the given order."""
    if max_tokens is None:
        return [rows]
    order = rows[lengths[rows].argsort(descending=True, stable=True)]
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or int(lengths[order[start]]) * (end + 1 - start) > max_tokens:
            batches.append(order[start:end])
            start = end
    return batches
