"""Repetition detection: find where a generation starts looping, so it can be stopped there.

A generation loops when its tail is one block of p tokens repeated: y_t = y_{t−p} for a run of
positions. With ``run_p(t)`` = how many consecutive positions up to t satisfy y_t = y_{t−p}, the
tokens ending at t contain (run_p(t) + p) / p copies of a period-p block. The first t where, for
some p ≤ max_period, that is ≥ min_repeats copies spanning ≥ min_span tokens is where the loop
is certain; everything after it is waste. O(n · max_period), no framework.
"""

from __future__ import annotations

from collections.abc import Sequence


def find_repetition(
    tokens: Sequence[int], max_period: int = 32, min_repeats: int = 6, min_span: int = 24
) -> int | None:
    """Length to keep: the index just past the first point where a loop is certain, or None.

    A kept prefix ends with ``min_repeats`` copies of the looping block (so the trajectory shows
    what went wrong) and nothing after them.
    """
    runs = [0] * (max_period + 1)
    for t in range(1, len(tokens)):
        for p in range(1, min(max_period, t) + 1):
            runs[p] = runs[p] + 1 if tokens[t] == tokens[t - p] else 0
            span = runs[p] + p
            if span >= min_span and span >= min_repeats * p:
                return t + 1
    return None


class RepeatDetector:
    """Stops trajectories that loop (see ``find_repetition``).

    Args:
        max_period: longest repeating block looked for, in tokens.
        min_repeats: copies of the block that make a loop certain.
        min_span: fewest tokens a loop must cover (keeps short runs like ``0000`` legal).
    """

    def __init__(self, max_period: int = 32, min_repeats: int = 6, min_span: int = 24):
        self.max_period, self.min_repeats, self.min_span = max_period, min_repeats, min_span

    def __call__(self, tokens: Sequence[int]) -> int | None:
        return find_repetition(tokens, self.max_period, self.min_repeats, self.min_span)
