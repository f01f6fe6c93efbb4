"""AutoEngine: vLLM where it is installed, else Hugging Face ``generate``, so one recipe runs anywhere.

The choice is made once, at start-up, and said in the log; an explicit ``VLLMEngine`` in YAML
instead fails with what to install.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

from k15.generation import Completion, Request, Sampling
from k15.rollout.engine import Engine
from k15.rollout.hf import HFEngine
from k15.rollout.vllm import VLLMEngine, VLLMUnavailable


class AutoEngine(Engine):
    """``VLLMEngine(**vllm)`` if vLLM imports, otherwise ``HFEngine(hf_max_sequences)``.

    Args:
        vllm: ``VLLMEngine``'s arguments (dtype, max_model_len, gpu_memory_utilization, …).
        hf_max_sequences: ``HFEngine``'s, for the fallback.
    """

    def __init__(self, vllm: dict[str, Any] | None = None, hf_max_sequences: int = 512):
        try:
            self.engine: Engine = VLLMEngine(**(vllm or {}))
            rank_zero_info("AutoEngine: rolling out with vLLM")
        except VLLMUnavailable as error:
            rank_zero_warn(f"AutoEngine: rolling out with Hugging Face generate, because {error}")
            self.engine = HFEngine(hf_max_sequences)
        self.max_model_len = self.engine.max_model_len

    @property
    def kind(self) -> str:
        return self.engine.kind  # the engine it chose

    def sync(self, model: nn.Module) -> None:
        self.engine.sync(model)

    def sample(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        return self.engine.sample(requests, sampling)

    def sleep(self) -> None:
        self.engine.sleep()
