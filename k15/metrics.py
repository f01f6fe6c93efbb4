"""Per-iteration metrics, written straight to the run's loggers at step = RL iteration.

Not ``LightningModule.log``: Lightning keeps every key it was ever given and logs each key's last
value again at every later step where the key is absent, so a reason or finish kind that did not
occur in an iteration would show last iteration's share (shares summing past 1), and an iteration
in which no group finished would repeat the previous rewards. Here an iteration logs exactly what
it measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lightning.pytorch import Trainer
from torch import Tensor


def log_iteration(trainer: Trainer, metrics: Mapping[str, float | Tensor], step: int) -> None:
    """Write ``metrics`` (floats or 0-d tensors) at ``step`` to every logger (loggers write on rank 0 only)."""
    values = {key: float(value) for key, value in metrics.items()}
    for logger in trainer.loggers:
        logger.log_metrics(values, step=step)


def shares(counts: Mapping[str, int], known: Iterable[str], prefix: str) -> dict[str, float]:
    """``{prefix}{name}: count / total`` for every name in ``known`` or ``counts`` (0 where absent),
    so each logged set of shares describes this iteration alone and sums to 1."""
    total = sum(counts.values())
    names = sorted(set(known) | set(counts))
    return {f"{prefix}{name}": (counts.get(name, 0) / total if total else 0.0) for name in names}


def over_ranks(every: list[Mapping[str, float]], summed: Iterable[str] = ()) -> dict[str, float]:
    """Every rank's metrics as one set: the keys in ``summed`` added up (totals, counts), ``*_max``
    keys maximised, the rest averaged over the ranks that report them (a rank whose partial
    rollouts finished no group has no accuracy to average in)."""
    summed = set(summed)
    keys = dict.fromkeys(key for ranks in every for key in ranks)
    out = {}
    for key in keys:
        values = [ranks[key] for ranks in every if key in ranks]
        if key in summed:
            out[key] = sum(values)
        elif key.endswith("_max"):
            out[key] = max(values)
        else:
            out[key] = sum(values) / len(values)
    return out
