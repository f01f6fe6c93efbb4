"""The rollout engine interface: token-id requests in, sampled completions out.

Engines are swapped in YAML (``engine: {class_path: k15.rollout.HFEngine}``); the rollout
callback and benchmarks only see this interface. Requests, sampling settings and completions are
``k15.generation``'s.
"""

from __future__ import annotations

from torch import nn

from k15.generation import Completion, Request, Sampling


class Engine:
    """Generates completions from the current policy weights.

    ``max_model_len``: the longest prompt + completion the engine serves (None: the model's own limit).
    """

    max_model_len: int | None = None

    @property
    def kind(self) -> str:
        """Which engine samples (``VLLMEngine``, ``HFEngine``): what reports name."""
        return type(self).__name__

    def sync(self, model: nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (θ_i), waking it if it sleeps.
        Every rank calls it at once: gathering sharded weights is collective."""
        raise NotImplementedError

    def sample(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        """Return ``request.samples`` completions for each request: [R][samples].

        With a seed, the j-th completion of the whole call (counting request by request) is
        sampled with seed ``sampling.seed + j``: it does not depend on the other requests of the
        call nor on how the engine batches them. Without one, every completion gets a fresh seed.
        """
        raise NotImplementedError

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        """``sampling.samples_per_prompt`` completions of at most ``sampling.max_new_tokens`` per prompt: [P][k]."""
        return self.sample(
            [Request(p, sampling.samples_per_prompt, sampling.max_new_tokens) for p in prompts], sampling
        )

    def sleep(self) -> None:
        """Free the engine's accelerator memory while the trainer updates the policy (the next
        ``sync`` takes it back)."""
