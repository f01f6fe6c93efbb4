"""RolloutCallback: before each RL iteration's ``training_step``, sample and score its trajectories.

    on_train_batch_start(batch of P prompts):
        engine.sync(π_θi)  →  k completions per prompt  →  RewardModule  →  batch.rollout
"""

from __future__ import annotations

import time
from collections import Counter

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from k15.data.prompts import PromptBatch
from k15.rollout.batch import Rollout, pack_engine_logprobs, pack_sequences
from k15.rollout.engine import Completion, Engine, Sampling
from k15.rollout.repetition import RepeatDetector


class RolloutCallback(Callback):
    """Samples k trajectories per prompt with ``engine`` and scores them with the policy's reward.

    Args:
        engine: the rollout engine (``k15.rollout.HFEngine``, …).
        samples_per_prompt: k.
        max_new_tokens: most tokens a trajectory may generate.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        seed: iteration i samples with seed ``seed + i``, so a resumed run samples as the original.
        repeat_detector: stops a trajectory where it starts looping and marks it ``repeat``
            (None: off). The reward's ``repeat_penalty`` then applies.
        text_samples_every_n_iterations: log a few completions as TensorBoard text this often.
    """

    def __init__(
        self,
        engine: Engine,
        samples_per_prompt: int = 8,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        repeat_detector: RepeatDetector | None = None,
        text_samples_every_n_iterations: int = 10,
    ):
        self.engine = engine
        self.samples_per_prompt = samples_per_prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.repeat_detector = repeat_detector
        self.text_samples_every_n_iterations = text_samples_every_n_iterations

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: PromptBatch, batch_idx: int) -> None:
        iteration = pl_module.iteration
        self.engine.sync(pl_module.model)
        start = time.perf_counter()
        batch.rollout = self.rollout(batch, pl_module.tokenizer, pl_module.reward, iteration)
        batch.rollout.to(pl_module.device)
        self._log(trainer, pl_module, batch, time.perf_counter() - start, iteration)

    def rollout(self, batch: PromptBatch, tokenizer, reward, iteration: int) -> Rollout:
        """Sample k completions per prompt from the (already synced) engine, score and pack them."""
        k = self.samples_per_prompt
        sampling = Sampling(k, self.max_new_tokens, self.temperature, self.top_p, self.seed + iteration)
        completions = self.engine.generate(batch.prompt_ids, sampling)
        if self.repeat_detector is not None:
            completions = [[self.stop_repeats(c) for c in group] for group in completions]

        flat = [c for group in completions for c in group]
        texts = tokenizer.batch_decode([c.token_ids for c in flat], skip_special_tokens=True)
        lengths = torch.tensor([len(c.token_ids) for c in flat])
        answers = [a for a in batch.answers for _ in range(k)]
        finish_reasons = [c.finish_reason for c in flat]
        input_ids, attention_mask, loss_mask = pack_sequences(batch.prompt_ids, completions, tokenizer.pad_token_id)
        return Rollout(
            input_ids=input_ids,
            attention_mask=attention_mask,
            loss_mask=loss_mask,
            rewards=reward(texts, answers, lengths, finish_reasons, k, iteration),
            completion_lengths=lengths,
            finish_reasons=finish_reasons,
            texts=texts,
            samples_per_prompt=k,
            engine_logprobs=pack_engine_logprobs(batch.prompt_ids, completions, input_ids.shape[1]),
        )

    def stop_repeats(self, completion: Completion) -> Completion:
        keep = self.repeat_detector(completion.token_ids)
        if keep is None or keep >= len(completion.token_ids):
            return completion
        logprobs = None if completion.logprobs is None else completion.logprobs[:keep]
        return Completion(completion.token_ids[:keep], "repeat", logprobs)

    def _log(self, trainer: Trainer, pl_module: LightningModule, batch: PromptBatch, seconds: float, iteration: int) -> None:
        rollout = batch.rollout
        lengths = rollout.completion_lengths.float()
        finished = Counter(rollout.finish_reasons)
        metrics = {
            "rollout/reward": rollout.rewards.total.mean(),
            "rollout/accuracy": rollout.rewards.correct.mean(),
            "rollout/response_len_mean": lengths.mean(),
            "rollout/response_len_max": lengths.max(),
            "rollout/tokens_per_s": rollout.num_tokens / seconds,  # generation, scoring and packing
            "rollout/seconds": seconds,
            # groups whose k rewards differ: the only ones that carry a learning signal
            "rollout/mixed_groups": (rollout.rewards.total.std(dim=1) > 0).float().mean(),
        }
        metrics.update({f"rollout/finish_{reason}": count / len(rollout.finish_reasons) for reason, count in finished.items()})
        pl_module.log_dict(metrics, batch_size=len(batch))
        pl_module.log_dict(
            {"reward": metrics["rollout/reward"], "acc": metrics["rollout/accuracy"]}, prog_bar=True, logger=False, batch_size=len(batch)
        )
        if isinstance(trainer.logger, TensorBoardLogger) and iteration % self.text_samples_every_n_iterations == 0:
            k = rollout.samples_per_prompt
            lines = [
                f"`{batch.prompts[n // k]}` → `{rollout.texts[n]}` (reward {rollout.rewards.total.flatten()[n]:.2f})"
                for n in range(0, min(len(rollout.texts), 4 * k), k)
            ]
            trainer.logger.experiment.add_text("rollout/samples", "\n\n".join(lines), global_step=trainer.global_step)
