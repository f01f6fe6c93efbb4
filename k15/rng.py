"""The process's random-number generators, saved in every checkpoint and restored on resume.

k15's own randomness is seeded per use (sample j of iteration i: ``seed + i·2²⁰ + j``; the update's
row order: ``seed + i``), so a resumed run does not depend on these. They are kept so that anything
else drawing from the global generators (a user's component, dropout) also continues where the
interrupted run stopped instead of restarting from ``seed_everything``.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_states() -> dict:
    """Tensors, numbers and tuples only, so a checkpoint still loads with ``torch.load(weights_only=True)``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached))
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
