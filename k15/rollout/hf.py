"""Rollouts with Hugging Face ``generate`` on the policy's own module (no copy, no weight sync)."""

from __future__ import annotations

import secrets

import torch
import torch.distributed as dist
from torch import Tensor, nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

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


def inverse_cdf_sample(probs: Tensor, uniforms: Tensor, top_p: float = 1.0) -> Tensor:
    """One token per row of ``probs`` [B, V], drawn with that row's uniform u ∈ [0, 1) from ``uniforms`` [B].

    Top-p keeps the nucleus: tokens in descending order of p while the mass before them is < top_p
    (the most likely token always, the token that crosses top_p included, as in HF and vLLM);
    every other token gets p = 0. With F(k) = p_0 + … + p_k the cumulative mass over the
    (sorted, when top_p < 1) vocabulary and M = F(V − 1), the token is the smallest k with
    F(k) > u·M, so P(k) = p_k / M: sampling from the renormalised nucleus. Zero-p tokens (banned,
    outside the nucleus) are never chosen: F does not rise at them. A row whose probabilities are
    not finite (weights that overflowed) gets the last token, as vLLM also samples on: the update
    then meets a non-finite loss, and the finite guard (``k15/finite.py``) stops the run.
    """
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        probs = probs * (probs.cumsum(dim=-1) - probs < top_p)
    cdf = probs.cumsum(dim=-1)
    mass = cdf[:, -1:]
    # u·M strictly below M (float rounding could give u·M = M, past the last token with p > 0)
    target = torch.minimum(uniforms.unsqueeze(-1) * mass, torch.nextafter(mass, torch.zeros_like(mass)))
    index = torch.searchsorted(cdf, target, right=True).clamp(max=probs.shape[-1] - 1)
    return (index if order is None else order.gather(-1, index)).squeeze(-1)


class SeededSampling(LogitsProcessor):
    """Samples every row with its own uniforms, then leaves only that token for greedy ``generate``.

    ``uniforms`` [rows, steps]: row i's draw for its t-th new token (t = input length − ``prompt_width``).
    Runs after ``generate``'s own processors, so banned tokens already score −inf (p = 0).
    """

    def __init__(self, uniforms: Tensor, prompt_width: int, temperature: float, top_p: float):
        self.uniforms, self.prompt_width, self.temperature, self.top_p = uniforms, prompt_width, temperature, top_p

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        probs = torch.softmax(scores / self.temperature, dim=-1)
        tokens = inverse_cdf_sample(probs, self.uniforms[:, input_ids.shape[1] - self.prompt_width], self.top_p)
        return torch.full_like(scores, -float("inf")).scatter_(-1, tokens.unsqueeze(-1), 0.0)


def row_uniforms(seeds: range, limits: list[int]) -> Tensor:
    """[rows, max(limits)] uniforms: row i's first ``limits[i]`` from a CPU generator seeded ``seeds[i]``.

    A row's draws depend on its seed and its own limit only, never on the rows batched with it (the
    rest of the row is never used: its tokens are cut at its limit).
    """
    uniforms = torch.full((len(seeds), max(limits)), 0.5)
    for i, (seed, limit) in enumerate(zip(seeds, limits, strict=True)):
        uniforms[i, :limit] = torch.rand(limit, generator=torch.Generator().manual_seed(seed))
    return uniforms


@torch.no_grad()
def hf_sample(
    model: nn.Module, requests: list[Request], sampling: Sampling, max_batch_size: int = 512
) -> list[list[Completion]]:
    """Sample with ``model.generate``, ≤ ``max_batch_size`` sequences at a time. → [R][samples].

    Each request is expanded to ``samples`` rows; a chunk generates up to its longest row limit
    and every row is cut back to its own, which is the same as having stopped there.
    Row j of the call (counting request by request) samples from its own generator seeded
    ``sampling.seed + j`` (a fresh random base seed without one), so its tokens do not depend on the
    other requests or on the chunking; ``generate`` runs greedy and ``SeededSampling`` picks the tokens.
    """
    config = model.generation_config
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    eos = eos + [t for t in sampling.stop_token_ids if t not in eos]
    greedy = sampling.temperature == 0
    rows = [
        (request.token_ids, request.max_new_tokens, request.model_inputs)
        for request in requests
        for _ in range(request.samples)
    ]
    was_training = model.training
    model.eval()
    completions: list[Completion] = []
    device = next(model.parameters()).device
    first_seed = secrets.randbits(62) if sampling.seed is None else sampling.seed
    # sampling draws from its own generators; the fork keeps anything inside generate off the global RNG
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for start in range(0, len(rows), max_batch_size):
            chunk = rows[start : start + max_batch_size]
            input_ids, attention_mask = left_pad([ids for ids, _, _ in chunk], config.pad_token_id)
            limits = [limit for _, limit, _ in chunk]
            seeds = range(first_seed + start, first_seed + start + len(chunk))
            sampler = (
                []
                if greedy
                else [
                    SeededSampling(
                        row_uniforms(seeds, limits).to(device), input_ids.shape[1], sampling.temperature, sampling.top_p
                    )
                ]
            )
            # A complete config, so nothing from the checkpoint's generation_config.json (a
            # repetition penalty, top_k, …) changes the distribution: rollouts must be samples of π_θ.
            generation_config = GenerationConfig(
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                repetition_penalty=1.0,
                suppress_tokens=list(sampling.banned_token_ids) or None,
                max_new_tokens=max(limits),
                eos_token_id=eos,
                pad_token_id=config.pad_token_id,
                bos_token_id=config.bos_token_id,
            )
            extra = {
                key: value.to(device) for key, value in concat_model_inputs([inputs for _, _, inputs in chunk]).items()
            }
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                **extra,  # a vision model's pixel_values
                generation_config=generation_config,
                logits_processor=LogitsProcessorList(sampler),
                # sharded weights (FSDP2) need every rank in every forward, even when its own
                # sequences have finished
                synced_gpus=dist.is_initialized() and dist.get_world_size() > 1,
            )
            new = out[:, input_ids.shape[1] :].tolist()
            completions.extend(
                cut_at_stop(row[:limit], set(eos)) for row, (_, limit, _) in zip(new, chunk, strict=True)
            )
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
