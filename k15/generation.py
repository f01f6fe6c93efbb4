"""Sampling from a language model: what every engine is asked and returns, and ``hf_sample``.

``Request`` (token ids in, how many samples, how long), ``Sampling`` (temperature, top-p, seed,
stop and banned tokens) and ``Completion`` (token ids out, why they stopped) are the vocabulary of
the rollout engines (``k15.rollout``); ``hf_sample`` samples with Hugging Face ``generate`` on a
live module. Held-out evaluation, the HF engine and the generative reward model all sample
through it, so it sits below all three.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from k15.data.encode import concat_model_inputs
from k15.padding import padded_ids


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


def cut_at_stop(tokens: list[int], stop_ids: set[int]) -> Completion:
    for t, token in enumerate(tokens):
        if token in stop_ids:
            return Completion(tokens[: t + 1], "stop")
    return Completion(tokens, "length")


def inverse_cdf_sample(probs: Tensor, uniforms: Tensor, top_p: float = 1.0) -> tuple[Tensor, Tensor]:
    """One token per row of ``probs`` [B, V], drawn with that row's uniform u ∈ [0, 1) from ``uniforms`` [B],
    and its log-probability under the distribution it was drawn from, log(p_k / M). → [B], [B].

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
    logp = (probs.gather(-1, index) / mass).log().squeeze(-1)
    return (index if order is None else order.gather(-1, index)).squeeze(-1), logp


class SeededSampling(LogitsProcessor):
    """Samples every row with its own uniforms, then leaves only that token for greedy ``generate``.

    ``uniforms`` [rows, steps]: row i's draw for its t-th new token (t = input length − ``prompt_width``).
    Runs after ``generate``'s own processors, so banned tokens already score −inf (p = 0).
    ``logprobs``: each step's [rows] log-probs of the tokens drawn, under the distribution drawn from
    (the off-policy weights' log μ).
    """

    def __init__(self, uniforms: Tensor, prompt_width: int, temperature: float, top_p: float):
        self.uniforms, self.prompt_width, self.temperature, self.top_p = uniforms, prompt_width, temperature, top_p
        self.logprobs: list[Tensor] = []

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        probs = torch.softmax(scores / self.temperature, dim=-1)
        step = input_ids.shape[1] - self.prompt_width
        tokens, logp = inverse_cdf_sample(probs, self.uniforms[:, step], self.top_p)
        self.logprobs.append(logp)
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
    model: nn.Module, requests: list[Request], sampling: Sampling, max_sequences: int = 512
) -> list[list[Completion]]:
    """Sample with ``model.generate``, ≤ ``max_sequences`` sequences (rows) at a time. → [R][samples].

    Each request is expanded to ``samples`` rows; a chunk generates up to its longest row limit
    and every row is cut back to its own, which is the same as having stopped there.
    Row j of the call (counting request by request) samples from its own generator seeded
    ``sampling.seed + j`` (a fresh random base seed without one), so its tokens do not depend on the
    other requests or on the chunking; ``generate`` runs greedy and ``SeededSampling`` picks the tokens
    (and reports their log-probs; greedy decoding reports none).
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
        for start in range(0, len(rows), max_sequences):
            chunk = rows[start : start + max_sequences]
            input_ids, attention_mask = padded_ids([ids for ids, _, _ in chunk], config.pad_token_id, "left")
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
            drawn = torch.stack(sampler[0].logprobs, dim=1).tolist() if sampler else [None] * len(chunk)
            for row, (_, limit, _), logprobs in zip(new, chunk, drawn, strict=True):
                completion = cut_at_stop(row[:limit], set(eos))
                completion.logprobs = None if logprobs is None else logprobs[: len(completion.token_ids)]
                completions.append(completion)
    model.train(was_training)
    groups, start = [], 0
    for request in requests:
        groups.append(completions[start : start + request.samples])
        start += request.samples
    return groups
