"""Rollouts with Hugging Face ``generate`` on the policy's own module (no copy, no weight sync)."""

from __future__ import annotations

from torch import nn

from k15.generation import Completion, Request, Sampling, hf_sample
from k15.rollout.engine import Engine


class HFEngine(Engine):
    """Hugging Face ``generate`` on the live policy module.

    Simple and exact (it samples from the very weights being trained), but slower than vLLM.

    Args:
        max_sequences: most sequences generated at once (prompts × samples per prompt).
    """

    def __init__(self, max_sequences: int = 512):
        self.max_sequences = max_sequences
        self.model: nn.Module | None = None

    def sync(self, model: nn.Module) -> None:
        self.model = model

    def sample(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        if self.model is None:
            raise RuntimeError("HFEngine.sample before sync(model)")
        return hf_sample(self.model, requests, sampling, self.max_sequences)
