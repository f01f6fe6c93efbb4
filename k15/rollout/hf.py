"""Rollouts with Hugging Face ``generate`` on the policy's own module (no copy, no weight sync)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from transformers import GenerationConfig

from k15.data.encode import concat_model_inputs
from k15.rollout.engine import Completion, Engine, Request, Sampling


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
def hf_sample(model: nn.Module, requests: list[Request], sampling: Sampling, max_batch_size: int = 512) -> list[list[Completion]]:
    """Sample with ``model.generate``, ≤ ``max_batch_size`` sequences at a time. → [R][samples].

    Each request is expanded to ``samples`` rows; a chunk generates up to its longest row limit
    and every row is cut back to its own, which is the same as having stopped there.
    """
    config = model.generation_config
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    eos = eos + [t for t in sampling.stop_token_ids if t not in eos]
    greedy = sampling.temperature == 0
    rows = [(request.token_ids, request.max_new_tokens, request.model_inputs) for request in requests for _ in range(request.samples)]
    was_training = model.training
    model.eval()
    completions: list[Completion] = []
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        for start in range(0, len(rows), max_batch_size):
            chunk = rows[start : start + max_batch_size]
            # A complete config, so nothing from the checkpoint's generation_config.json (a
            # repetition penalty, top_k, …) changes the distribution: rollouts must be samples of π_θ.
            generation_config = GenerationConfig(
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None,
                repetition_penalty=1.0,
                suppress_tokens=list(sampling.banned_token_ids) or None,
                max_new_tokens=max(limit for _, limit, _ in chunk),
                eos_token_id=eos,
                pad_token_id=config.pad_token_id,
                bos_token_id=config.bos_token_id,
            )
            input_ids, attention_mask = left_pad([ids for ids, _, _ in chunk], config.pad_token_id)
            extra = {key: value.to(device) for key, value in concat_model_inputs([inputs for _, _, inputs in chunk]).items()}
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                **extra,  # a vision model's pixel_values
                generation_config=generation_config,
                # sharded weights (FSDP2) need every rank in every forward, even when its own
                # sequences have finished
                synced_gpus=dist.is_initialized() and dist.get_world_size() > 1,
            )
            new = out[:, input_ids.shape[1] :].tolist()
            completions.extend(cut_at_stop(row[:limit], set(eos)) for row, (_, limit, _) in zip(new, chunk, strict=True))
    model.train(was_training)
    groups, start = [], 0
    for request in requests:
        groups.append(completions[start : start + request.samples])
        start += request.samples
    return groups


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

    def sample(self, requests: list[Request], sampling: Sampling) -> list[list[Completion]]:
        if self.model is None:
            raise RuntimeError("HFEngine.sample before sync(model)")
        return hf_sample(self.model, requests, sampling, self.max_batch_size)
