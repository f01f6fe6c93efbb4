"""The rollout engine interface: token-id requests in, sampled completions out.

Engines are swapped in YAML (``engine: {class_path: k15.rollout.HFEngine}``); the rollout
callback, evaluation and benchmarks only see this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass(frozen=True)
class Sampling:
    """How to sample. ``temperature = 0`` means greedy.

    ``samples_per_prompt`` and ``max_new_tokens`` apply to ``Engine.generate`` (the same for every
    prompt); ``Engine.sample`` takes them per request.
    """

    samples_per_prompt: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()  # stop at these as at <eos> (kept in the completion)
    banned_token_ids: tuple[int, ...] = ()  # never sampled, e.g. a vision model's image placeholder


@dataclass(frozen=True)
class Request:
    """Sample ``samples`` continuations of ``token_ids``, each at most ``max_new_tokens`` long.

    A partial rollout resubmits prompt + the tokens generated so far as ``token_ids``.
    An image prompt carries its images twice, once in each engine's form
    (``k15.data.encode.encode_prompt``): encoded ``images``, which vLLM preprocesses itself, and
    the processor's ``model_inputs`` (``pixel_values``), which the HF model's forward takes.
    ``token_ids`` then already hold the expanded image tokens.
    """

    token_ids: list[int]
    samples: int = 1
    max_new_tokens: int = 64
    images: list[bytes] = field(default_factory=list)
    model_inputs: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Completion:
    """One generated continuation. ``token_ids`` include the stop token when one was produced.

    finish_reason: ``stop`` (produced <eos>) or ``length`` (hit its request's max_new_tokens).
    logprobs: the engine's log-prob of each generated token, where the engine reports them.
    """

    token_ids: list[int]
    finish_reason: str
    logprobs: list[float] | None = None


class Engine:
    """Generates completions from the current policy weights.

    ``max_model_len``: the longest prompt + completion the engine serves (None: the model's own limit).
    """

    max_model_len: int | None = None

    def sync(self, model: nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights (θ_i)."""
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
        """Free the engine's accelerator memory while the trainer updates the policy."""

    def wake_up(self) -> None:
        """Take back what ``sleep`` freed, before the next ``sync``."""
