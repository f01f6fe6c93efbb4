"""Ragged rows → one rectangular tensor, padded on the left (for generation) or the right.

Generation pads on the left, so every row's next token is at the same last position; training and
scoring pad on the right, so a row's positions are 0..len−1 whatever it is batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

Side = Literal["left", "right"]


def pad_rows(rows: Sequence[Sequence[float]], value: float, side: Side = "right", dtype=torch.long) -> Tensor:
    """[len(rows), longest row]: each row's values, ``value`` in the padding."""
    return pad_sequence(
        [torch.tensor(row, dtype=dtype) for row in rows], batch_first=True, padding_value=value, padding_side=side
    )


def padded_ids(rows: Sequence[Sequence[int]], pad_id: int, side: Side = "right") -> tuple[Tensor, Tensor]:
    """Token ids → input_ids [R, T] (``pad_id`` in the padding) and attention_mask [R, T] (1 on tokens)."""
    return pad_rows(rows, pad_id, side), pad_rows([[1] * len(row) for row in rows], 0, side)
