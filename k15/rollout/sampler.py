"""RolloutSampler: an RL iteration's trajectories, sampled, scored and packed, without Lightning.

    continue the replay buffer's unfinished trajectories and start k for each new prompt, each by
    ≤ segment_tokens → groups whose k trajectories have all finished → reward → a packed ``Rollout``

Partial rollouts (k1.5 §2.6.2): with ``segment_tokens`` set, no iteration waits for the long
tail. A trajectory still going after its budget is kept in the replay buffer (part of the
checkpoint) and resubmitted next iteration as prompt + tokens so far, so one trajectory can span
several policy versions; ``segments_in_loss`` says whether the older segments are trained on.

``k15.rollout.RolloutCallback`` is its Lightning face; benchmarks drive it directly.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import torch

from k15.data.prompts import PromptBatch
from k15.errors import require_at_least_one
from k15.generation import Completion, Request, Sampling
from k15.reward.terms import Responses
from k15.rollout.batch import Rollout, pack_trajectories
from k15.rollout.engine import Engine
from k15.rollout.repetition import RepeatDetector
from k15.rollout.trajectory import UNFINISHED_REASON, Group, ReplayBuffer, Segment, Trajectory

SAMPLES_PER_ITERATION_SEED_STRIDE = 1 << 20  # sample j of iteration i on rank r (of R): seed + (i·R + r)·2²⁰ + j


@dataclass
class LengthStage:
    """A stage of the length curriculum: responses of at most ``max_new_tokens`` until iteration
    ``until`` (exclusive; None: to the end of the run)."""

    max_new_tokens: int
    until: int | None = None


class RolloutSampler:
    """Samples k trajectories per prompt with ``engine`` and scores them with a reward.

    Args:
        engine: the rollout engine (``k15.rollout.HFEngine``, ``k15.rollout.vllm.VLLMEngine``).
        samples_per_prompt: k.
        max_new_tokens: hard cap on a trajectory's total length, over all its segments.
        length_stages: a length curriculum (as DeepScaleR's 8k → 16k → 24k): the cap rises stage by
            stage, ``[{until: 200, max_new_tokens: 8192}, {max_new_tokens: 16384}]``, up to
            ``max_new_tokens``, which the memory plan and the prompt-length limit use (None: one stage).
        segment_tokens: partial rollouts: the most tokens a trajectory may generate in one
            iteration (None: off, every trajectory runs to the end in its first iteration).
        segments_in_loss: ``all`` trains on every token of a finished trajectory; ``newest`` only
            on the tokens this iteration's π_θi sampled (older segments are context only).
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        stop_token_ids: tokens that end a response as <eos> does (the engine's tokenizer ids).
        seed: sample j of iteration i on rank r (of R ranks) is seeded ``seed + (i·R + r)·2²⁰ + j``,
            so a resumed run samples as the original and no two ranks share a seed.
        repeat_detector: stops a trajectory where it starts looping and marks it ``repeat``
            (None: off). A ``RepetitionPenalty`` reward term then penalises it.
    """

    def __init__(
        self,
        engine: Engine,
        samples_per_prompt: int = 8,
        max_new_tokens: int = 64,
        length_stages: list[LengthStage] | None = None,
        segment_tokens: int | None = None,
        segments_in_loss: Literal["all", "newest"] = "all",
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop_token_ids: list[int] | None = None,
        seed: int = 0,
        repeat_detector: RepeatDetector | None = None,
    ):
        require_at_least_one(
            "rollout",
            samples_per_prompt=samples_per_prompt,
            max_new_tokens=max_new_tokens,
            segment_tokens=segment_tokens,
        )
        if not 0 <= temperature < float("inf"):
            raise ValueError(f"rollout.temperature must be a finite number ≥ 0 (0: greedy), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"rollout.top_p must be in (0, 1], got {top_p}")
        self.engine = engine
        self.samples_per_prompt = samples_per_prompt
        self.max_new_tokens = max_new_tokens
        self.length_stages = checked_length_stages(length_stages or [LengthStage(max_new_tokens)], max_new_tokens)
        self.segment_tokens = segment_tokens
        self.segments_in_loss = segments_in_loss
        self.temperature = temperature
        self.top_p = top_p
        self.stop_token_ids = tuple(stop_token_ids or ())
        self.seed = seed
        self.repeat_detector = repeat_detector
        self.buffer = ReplayBuffer()
        self.banned_token_ids: tuple[int, ...] = ()  # tokens never sampled (a vision model's image placeholder)
        self.segment_outcomes: Counter[str] = Counter()  # this iteration: stop / repeat / max_length / budget
        self.new_tokens = 0  # tokens generated this iteration

    def first_seed(self, iteration: int, rank: int = 0, world_size: int = 1) -> int:
        """The seed of sample 0 of ``iteration`` on ``rank``: ``seed + (i·R + r)·2²⁰``."""
        return self.seed + (iteration * world_size + rank) * SAMPLES_PER_ITERATION_SEED_STRIDE

    def rollout(
        self, batch: PromptBatch, tokenizer, reward, iteration: int, first_seed: int | None = None
    ) -> Rollout | None:
        """Continue the buffered trajectories and start k per new prompt on the (already synced)
        engine, sample j seeded ``first_seed + j`` (default: a single process's); score and pack
        the groups that finished. None when no group finished."""
        first_seed = self.first_seed(iteration) if first_seed is None else first_seed
        k = self.samples_per_prompt
        keys = batch.keys or [None] * len(batch)
        fresh = [
            Group(ids, p, a, [Trajectory() for _ in range(k)], key, images, inputs)
            for ids, p, a, key, images, inputs in zip(
                batch.prompt_ids, batch.prompts, batch.answers, keys, batch.images, batch.model_inputs, strict=True
            )
        ]
        groups = self.buffer.take() + fresh
        self.sample_segments(groups, iteration, first_seed)
        self.buffer.put([g for g in groups if not g.finished])
        finished = [g for g in groups if g.finished]
        return self.score(finished, tokenizer, reward, iteration) if finished else None

    def sample_segments(self, groups: list[Group], iteration: int, first_seed: int) -> None:
        """Generate one segment, of ≤ segment_tokens, for every unfinished trajectory."""
        cap = self.response_cap(iteration)
        budget = min(self.segment_tokens or cap, cap)
        requests, targets = [], []
        for group in groups:
            new = [t for t in group.trajectories if not t.segments]
            if new:  # a new prompt: one request for its k samples
                requests.append(Request(group.prompt_ids, len(new), budget, group.images, group.model_inputs))
                targets.append(new)
            for t in group.trajectories:
                if t.segments and t.finish_reason is None:
                    limit = min(budget, cap - len(t))
                    requests.append(Request(group.prompt_ids + t.token_ids, 1, limit, group.images, group.model_inputs))
                    targets.append([t])
        sampling = Sampling(
            temperature=self.temperature,
            top_p=self.top_p,
            seed=first_seed,
            stop_token_ids=self.stop_token_ids,
            banned_token_ids=self.banned_token_ids,
        )
        completions = self.engine.sample(requests, sampling)
        self.segment_outcomes, self.new_tokens = Counter(), 0
        for trajectories, group_completions in zip(targets, completions, strict=True):
            for trajectory, completion in zip(trajectories, group_completions, strict=True):
                trajectory.segments.append(Segment(iteration, completion.token_ids, completion.logprobs))
                self.new_tokens += len(completion.token_ids)
                trajectory.finish_reason = self.finish_reason(trajectory, completion, cap)
                self.segment_outcomes[trajectory.finish_reason or UNFINISHED_REASON] += 1

    def response_cap(self, iteration: int) -> int:
        """The most tokens a response may have at ``iteration`` (its length-curriculum stage's)."""
        return next(s.max_new_tokens for s in self.length_stages if s.until is None or iteration < s.until)

    def finish_reason(self, trajectory: Trajectory, completion: Completion, cap: int | None = None) -> str | None:
        """Why ``trajectory`` ended with its newest segment, or None if it goes on."""
        if self.repeat_detector is not None:
            keep = self.repeat_detector(trajectory.token_ids)
            if keep is not None:
                trajectory.truncate(keep)
                return "repeat"
        if completion.finish_reason == "stop":
            return "stop"
        if len(trajectory) >= (cap or self.max_new_tokens):
            return "max_length"
        return None

    def score(self, groups: list[Group], tokenizer, reward, iteration: int) -> Rollout:
        k = self.samples_per_prompt
        trajectories = [t for g in groups for t in g.trajectories]
        texts = tokenizer.batch_decode([t.token_ids for t in trajectories], skip_special_tokens=True)
        lengths = torch.tensor([len(t) for t in trajectories])
        finish_reasons = [t.finish_reason for t in trajectories]
        responses = Responses(
            questions=[g.prompt for g in groups for _ in range(k)],
            completions=texts,
            answers=[g.answer for g in groups for _ in range(k)],
            token_ids=[t.token_ids for t in trajectories],
            finish_reasons=finish_reasons,
            k=k,
            iteration=iteration,
        )
        input_ids, attention_mask, versions, engine_logprobs = pack_trajectories(groups, tokenizer.pad_token_id)
        in_loss = versions == iteration if self.segments_in_loss == "newest" else versions >= 0
        return Rollout(
            input_ids=input_ids,
            attention_mask=attention_mask,
            loss_mask=in_loss.float(),
            versions=versions,
            rewards=reward(responses),
            completion_lengths=lengths,
            finish_reasons=finish_reasons,
            texts=texts,
            prompts=[g.prompt for g in groups],
            keys=[g.key for g in groups],
            samples_per_prompt=k,
            engine_logprobs=engine_logprobs,
            model_inputs=[g.model_inputs for g in groups for _ in range(k)],
        )


def checked_length_stages(stages: list[LengthStage], max_new_tokens: int) -> list[LengthStage]:
    """Stages in order, each ``until`` after the last, caps that never fall (a buffered partial
    rollout must still fit its stage) and never pass ``max_new_tokens``; the last runs to the end."""
    untils = [s.until for s in stages]
    caps = [s.max_new_tokens for s in stages]
    if untils[-1] is not None or None in untils[:-1] or untils[:-1] != sorted(set(untils[:-1])):
        raise ValueError(f"rollout.length_stages: 'until' must rise and the last stage have none, got {untils}")
    if caps != sorted(caps) or caps[0] < 1 or caps[-1] > max_new_tokens:
        raise ValueError(
            f"rollout.length_stages: max_new_tokens must rise from ≥ 1 to at most rollout.max_new_tokens "
            f"({max_new_tokens}), got {caps}"
        )
    return stages
