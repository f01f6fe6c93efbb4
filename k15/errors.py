"""Errors a user fixes or acts on, reported by the CLI as one ``k15: error: …`` line, not a traceback.

    K15Error     bad input met while running: a shard set with no usable record, a curriculum
                 stage smaller than a batch, a setting only checkable once the model exists (exit 2)
    RunStopped   the run stopped itself before its end: non-finite updates, a signal (exit code
                 per cause; the last good checkpoint is left intact)

Set ``K15_TRACEBACK=1`` to see the traceback instead.
"""

from __future__ import annotations


class K15Error(Exception):
    """A problem with the run's input or settings, named in one line (exit code 2, as for config errors)."""

    exit_code = 2


class RunStopped(K15Error):
    """The run stopped before its end; ``exit_code`` says why (1: an error in training, 128 + n: signal n)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def require_at_least_one(scope: str, **values: int | None) -> None:
    """A ``ValueError`` naming ``scope.<name>`` for the first count below 1 (None: unset, allowed),
    so a zero or negative count fails at start-up instead of as a library's error mid-run."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{scope}.{name} must be ≥ 1, got {value}")
