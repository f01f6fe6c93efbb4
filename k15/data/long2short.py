"""long2short data (k1.5 §2.4): from a long-CoT model's n samples of a prompt, the shortest correct
response for SFT, and preference pairs against it for DPO.

For one prompt x with sampled responses y_1 … y_n, lengths ℓ_j (tokens) and correctness c_j ∈ {0, 1}:

    shortest rejection sampling   w = argmin_{j : c_j = 1} ℓ_j      (the first of equals; none if no c_j = 1)
                                  → one SFT example (x, y_w)
    preference pairs (y_w, y_l)   for every l ≠ w with   c_l = 0                     (wrong, any length)
                                                     or  ℓ_l ≥ ratio · ℓ_w           (right, but ≥ 1.5× longer)
                                  a right response shorter than ratio · ℓ_w makes no pair: it is
                                  short enough that preferring y_w over it would teach noise.

A prompt with no correct sample gives neither. The paper uses n = 8 and ratio = 1.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from k15.data.shards import PROMPT_FIELDS


def shortest_correct(lengths: Sequence[int], correct: Sequence[bool]) -> int | None:
    """w: the index of the shortest correct response, the first of equals; None when none is correct."""
    candidates = [j for j, ok in enumerate(correct) if ok]
    return min(candidates, key=lambda j: lengths[j]) if candidates else None


def rejected_responses(lengths: Sequence[int], correct: Sequence[bool], ratio: float = 1.5) -> list[int]:
    """The l paired against w (module docstring), in sample order; [] when none is correct."""
    if len(lengths) != len(correct):
        raise ValueError(f"{len(lengths)} lengths for {len(correct)} verdicts")
    chosen = shortest_correct(lengths, correct)
    if chosen is None:
        return []
    return [
        j
        for j, (length, ok) in enumerate(zip(lengths, correct, strict=True))
        if j != chosen and (not ok or length >= ratio * lengths[chosen])
    ]


@dataclass
class Long2Short:
    """One prompt's outcome: the SFT record (None: no correct sample) and the preference-pair records."""

    sft: dict | None
    pairs: list[dict]


def long2short_records(
    record: dict, texts: Sequence[str], lengths: Sequence[int], correct: Sequence[bool], ratio: float = 1.5
) -> Long2Short:
    """The prompt ``record``'s new records from its samples (``texts``, their token ``lengths`` and
    verdicts): the prompt fields, ``origin_key`` (the record's pool key), and ``solution`` = y_w for
    SFT, or ``chosen`` = y_w and ``rejected`` = y_l for a pair. The record's other fields are left
    behind: some describe the long solution (who wrote it), which the new records no longer hold."""
    chosen = shortest_correct(lengths, correct)
    if chosen is None:
        return Long2Short(None, [])
    base = {key: record[key] for key in PROMPT_FIELDS} | {"origin_key": record["__key__"]}
    pairs = [
        base | {"chosen": texts[chosen], "rejected": texts[j]} for j in rejected_responses(lengths, correct, ratio)
    ]
    return Long2Short(base | {"solution": texts[chosen]}, pairs)
