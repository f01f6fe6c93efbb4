"""Rollouts: the engine interface, engines, the packed trajectory batch, the sampler and its callback."""

from k15.generation import Completion, Request, Sampling
from k15.rollout.auto import AutoEngine
from k15.rollout.batch import Rollout
from k15.rollout.callback import RolloutCallback
from k15.rollout.engine import Engine
from k15.rollout.hf import HFEngine
from k15.rollout.sampler import RolloutSampler

__all__ = [
    "AutoEngine",
    "Completion",
    "Engine",
    "HFEngine",
    "Request",
    "Rollout",
    "RolloutCallback",
    "RolloutSampler",
    "Sampling",
]
