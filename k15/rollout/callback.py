"""RolloutCallback: before each RL iteration's ``training_step``, sample and score its trajectories.

    on_train_batch_start(batch of P new prompts):
        engine.wake_up → engine.sync(π_θi) → continue the replay buffer's unfinished trajectories
        and start k for each new prompt, each by ≤ segment_tokens → groups whose k trajectories
        have all finished → RewardModule → batch.rollout → engine.sleep

Partial rollouts (k1.5 §2.6.2): with ``segment_tokens`` set, no iteration waits for the long
tail. A trajectory still going after its budget is kept in the replay buffer (part of the
checkpoint) and resubmitted next iteration as prompt + tokens so far, so one trajectory can span
several policy versions; ``segments_in_loss`` says whether the older segments are trained on.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from k15.data.prompts import PromptBatch, all_ranks
from k15.errors import K15Error, require_at_least_one
from k15.generation import Completion, Request, Sampling
from k15.metrics import log_iteration, shares
from k15.reward.terms import Responses
from k15.rollout.batch import Rollout, pack_trajectories
from k15.rollout.engine import Engine
from k15.rollout.repetition import RepeatDetector
from k15.rollout.trajectory import FINISH_REASONS, UNFINISHED_REASON, Group, ReplayBuffer, Segment, Trajectory

SAMPLES_PER_ITERATION_SEED_STRIDE = 1 << 20  # sample j of iteration i on rank r (of R): seed + (i·R + r)·2²⁰ + j


class RolloutCallback(Callback):
    """Samples k trajectories per prompt with ``engine`` and scores them with the policy's reward.

    Args:
        engine: the rollout engine (``k15.rollout.HFEngine``, ``k15.rollout.vllm.VLLMEngine``).
        samples_per_prompt: k.
        max_new_tokens: hard cap on a trajectory's total length, over all its segments.
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
        text_samples_every_n_iterations: log a few completions as TensorBoard text this often.
    """

    def __init__(
        self,
        engine: Engine,
        samples_per_prompt: int = 8,
        max_new_tokens: int = 64,
        segment_tokens: int | None = None,
        segments_in_loss: Literal["all", "newest"] = "all",
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop_token_ids: list[int] | None = None,
        seed: int = 0,
        repeat_detector: RepeatDetector | None = None,
        text_samples_every_n_iterations: int = 10,
    ):
        require_at_least_one(
            "rollout",
            samples_per_prompt=samples_per_prompt,
            max_new_tokens=max_new_tokens,
            segment_tokens=segment_tokens,
            text_samples_every_n_iterations=text_samples_every_n_iterations,
        )
        if not 0 <= temperature < float("inf"):
            raise ValueError(f"rollout.temperature must be a finite number ≥ 0 (0: greedy), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"rollout.top_p must be in (0, 1], got {top_p}")
        self.engine = engine
        self.samples_per_prompt = samples_per_prompt
        self.max_new_tokens = max_new_tokens
        self.segment_tokens = segment_tokens
        self.segments_in_loss = segments_in_loss
        self.temperature = temperature
        self.top_p = top_p
        self.stop_token_ids = tuple(stop_token_ids or ())
        self.seed = seed
        self.repeat_detector = repeat_detector
        self.text_samples_every_n_iterations = text_samples_every_n_iterations
        self.buffer = ReplayBuffer()
        self.rank, self.world_size = 0, 1
        self.banned_token_ids: tuple[int, ...] = ()  # the policy's unsampled_token_ids, set in setup
        self.segment_outcomes: Counter[str] = Counter()  # this iteration: stop / repeat / max_length / budget
        self.new_tokens = 0  # tokens generated this iteration
        self.reasons_seen: dict[
            str, set[str]
        ] = {}  # reward term → every reason it gave so far (logged as 0 when absent)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.banned_token_ids = pl_module.unsampled_token_ids
        self.rank, self.world_size = trainer.global_rank, trainer.world_size  # setup runs before a resume's restore

    def state_dict(self) -> dict:
        """Every rank's replay buffer (each holds its own unfinished trajectories; every rank calls this)."""
        return {
            "buffers": all_ranks(self.buffer.state_dict()),
            "reasons_seen": {term: sorted(r) for term, r in self.reasons_seen.items()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        buffers = state_dict.get("buffers") or [state_dict["buffer"]]  # "buffer": one process's, before 2026-12
        if len(buffers) != self.world_size:
            raise K15Error(
                f"the checkpoint's replay buffers are those of {len(buffers)} process(es), this run has "
                f"{self.world_size}: resume with as many processes as the run had"
            )
        self.buffer.load_state_dict(buffers[self.rank])
        self.reasons_seen = {term: set(r) for term, r in state_dict.get("reasons_seen", {}).items()}

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: PromptBatch, batch_idx: int
    ) -> None:
        iteration = pl_module.iteration
        start = time.perf_counter()
        self.engine.wake_up()
        self.engine.sync(pl_module.model)
        synced = time.perf_counter()
        first_seed = self.first_seed(iteration, trainer.global_rank, trainer.world_size)
        batch.rollout = self.rollout(batch, pl_module.tokenizer, pl_module.reward, iteration, first_seed)
        self.engine.sleep()
        if batch.rollout is not None:
            record = getattr(trainer.datamodule, "record", None)  # a data module that tracks success rates
            if record is not None:
                tracked = [n for n, key in enumerate(batch.rollout.keys) if key is not None]
                record([batch.rollout.keys[n] for n in tracked], batch.rollout.rewards.correct[tracked])
            batch.rollout = batch.rollout.to(pl_module.device)
        self._log(trainer, pl_module, batch.rollout, synced - start, time.perf_counter() - synced, iteration)

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
        budget = min(self.segment_tokens or self.max_new_tokens, self.max_new_tokens)
        requests, targets = [], []
        for group in groups:
            new = [t for t in group.trajectories if not t.segments]
            if new:  # a new prompt: one request for its k samples
                requests.append(Request(group.prompt_ids, len(new), budget, group.images, group.model_inputs))
                targets.append(new)
            for t in group.trajectories:
                if t.segments and t.finish_reason is None:
                    limit = min(budget, self.max_new_tokens - len(t))
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
                trajectory.finish_reason = self.finish_reason(trajectory, completion)
                self.segment_outcomes[trajectory.finish_reason or UNFINISHED_REASON] += 1

    def finish_reason(self, trajectory: Trajectory, completion: Completion) -> str | None:
        """Why ``trajectory`` ended with its newest segment, or None if it goes on."""
        if self.repeat_detector is not None:
            keep = self.repeat_detector(trajectory.token_ids)
            if keep is not None:
                trajectory.truncate(keep)
                return "repeat"
        if completion.finish_reason == "stop":
            return "stop"
        if len(trajectory) >= self.max_new_tokens:
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

    def _log(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        rollout: Rollout | None,
        sync_s: float,
        rollout_s: float,
        iteration: int,
    ) -> None:
        metrics = {
            "rollout/sync_seconds": sync_s,
            "rollout/seconds": rollout_s,  # generation, scoring and packing
            "rollout/tokens_per_s": self.new_tokens / rollout_s,
            "rollout/buffer_groups": float(len(self.buffer)),
            "rollout/buffer_trajectories": float(self.buffer.unfinished_trajectories),
            "rollout/groups_finished": 0.0 if rollout is None else float(len(rollout.prompts)),
        } | shares(self.segment_outcomes, FINISH_REASONS, "rollout/finish_")
        counts = pl_module.reward.verifier_counts()
        if counts:  # summed over ranks: every rank judges its own share of the prompts
            values = torch.tensor(list(counts.values()), dtype=torch.float64, device=pl_module.device)
            summed = trainer.strategy.reduce(values, reduce_op="sum")
            metrics |= dict(zip(counts, summed.tolist(), strict=True))
        if rollout is not None:
            lengths = rollout.completion_lengths.float()
            completion = rollout.versions >= 0
            metrics |= {
                "rollout/reward": rollout.rewards.total.mean(),
                "rollout/accuracy": rollout.rewards.correct.mean(),
                "rollout/response_len_mean": lengths.mean(),
                "rollout/response_len_max": lengths.max(),
                # tokens sampled by an older policy than π_θi: what partial rollouts trade for speed
                "rollout/stale_token_share": ((rollout.versions < iteration) & completion).sum() / completion.sum(),
                # groups whose k rewards differ: the only ones that carry a learning signal
                "rollout/mixed_groups": (rollout.rewards.total.std(dim=1) > 0).float().mean(),
            } | rollout.rewards.breakdown(self.reasons_seen)
            for term, reasons in rollout.rewards.reasons.items():
                self.reasons_seen.setdefault(term, set()).update(reasons)
            pl_module.log_dict(
                {"reward": metrics["rollout/reward"], "acc": metrics["rollout/accuracy"]},
                prog_bar=True,
                logger=False,
                batch_size=1,
            )
        log_iteration(trainer, metrics, iteration)
        if (
            rollout is not None
            and isinstance(trainer.logger, TensorBoardLogger)
            and iteration % self.text_samples_every_n_iterations == 0
        ):
            k = rollout.samples_per_prompt
            lines = [
                f"`{rollout.prompts[n // k]}` → `{rollout.texts[n]}` (reward {rollout.rewards.explain(n)})"
                for n in range(0, min(len(rollout.texts), 4 * k), k)
            ]
            trainer.logger.experiment.add_text("rollout/samples", "\n\n".join(lines), global_step=iteration)
