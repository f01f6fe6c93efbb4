"""Rollouts with Hugging Face ``generate`` on the policy's own module (no copy, no weight sync)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from transformers import GenerationConfig

from k15.rollout.engine import Completion, Engine, Sampling


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[P] ragged ids → input_ids, attention_mask [P, L], padded on the left for generation."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        attention_mask[i, width - len(ids) :] = 1
    return input_ids, attention_mask


def cut_at_stop(tokens: list[int], stop_ids: set[int]) -> Completion:
    for t, token in enumerate(tokens):
        if token in stop_ids:
            return Completion(tokens[: t + 1], "stop")
    return Completion(tokens, "length")


@torch.no_grad()
def hf_generate(model: nn.Module, prompts: list[list[int]], sampling: Sampling, max_batch_size: int = 512) -> list[list[Completion]]:
    """Sample with ``model.generate`` in chunks of ≤ ``max_batch_size`` sequences. → [P][k]."""
    config = model.generation_config
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    k = sampling.samples_per_prompt
    greedy = sampling.temperature == 0
    # A complete config, so nothing from the checkpoint's generation_config.json (a repetition
    # penalty, top_k, …) changes the distribution: rollouts must be samples of π_θ itself.
    generation_config = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else sampling.temperature,
        top_p=None if greedy else sampling.top_p,
        top_k=None,
        repetition_penalty=1.0,
        num_return_sequences=k,
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=eos,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
    )
    was_training = model.training
    model.eval()
    results: list[list[Completion]] = []
    prompts_per_chunk = max(1, max_batch_size // k)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        for start in range(0, len(prompts), prompts_per_chunk):
            chunk = prompts[start : start + prompts_per_chunk]
            input_ids, attention_mask = left_pad(chunk, config.pad_token_id)
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=generation_config,
                # sharded weights (FSDP2) need every rank in every forward, even when its own
                # sequences have finished
                synced_gpus=dist.is_initialized() and dist.get_world_size() > 1,
            )
            new = out[:, input_ids.shape[1] :].tolist()
            completions = [cut_at_stop(row, set(eos)) for row in new]
            results.extend(completions[i : i + k] for i in range(0, len(completions), k))
    model.train(was_training)
    return results


class HFEngine(Engine):
    """Hugging Face ``generate`` on the live policy module.

    Simple and exact (it samples from the very weights being trained), but slower than vLLM.

    Args:
        max_batch_size: most sequences generated at once (prompts × samples).
    """

    def __init__(self, max_batch_size: int = 512):
        self.max_batch_size = max_batch_size
        self.model: nn.Module | None = None

    def sync(self, model: nn.Module) -> None:
        self.model = model

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        if self.model is None:
            raise RuntimeError("HFEngine.generate before sync(model)")
        return hf_generate(self.model, prompts, sampling, self.max_batch_size)
