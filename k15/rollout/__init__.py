"""Rollouts: the engine interface, engines, the packed trajectory batch, and the callback."""

from k15.rollout.batch import Rollout
from k15.rollout.callback import RolloutCallback
from k15.rollout.engine import Completion, Engine, Sampling
from k15.rollout.hf import HFEngine

__all__ = ["Completion", "Engine", "HFEngine", "Rollout", "RolloutCallback", "Sampling"]
