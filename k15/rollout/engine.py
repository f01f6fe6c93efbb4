"""The rollout engine interface: token-id prompts in, k sampled completions per prompt out.

Engines are swapped in YAML (``engine: {class_path: k15.rollout.HFEngine}``); the rollout
callback, evaluation and benchmarks only see this interface.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Sampling:
    """How to sample. ``temperature = 0`` means greedy."""

    samples_per_prompt: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Completion:
    """One generated continuation. ``token_ids`` include the stop token when one was produced.

    finish_reason: ``stop`` (produced <eos>) or ``length`` (hit max_new_tokens).
    logprobs: the engine's log-prob of each generated token, where the engine reports them.
    """

    token_ids: list[int]
    finish_reason: str
    logprobs: list[float] | None = None


class Engine:
    """Generates completions from the current policy weights."""

    def sync(self, model: nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (θ_i)."""
        raise NotImplementedError

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        """Return ``sampling.samples_per_prompt`` completions for each prompt: [P][k]."""
        raise NotImplementedError
