"""SFTModule: the long-CoT warm-up — next-token cross-entropy on worked solutions."""

from __future__ import annotations

from k15.data.sft import IGNORE_INDEX, SFTBatch
from k15.language_module import LanguageModule
from k15.logprobs import token_logprobs
from k15.metrics import log_iteration


class SFTModule(LanguageModule):
    """Supervised fine-tuning on prompt → worked solution; loss only on the solution tokens.

    Args: see ``LanguageModule``.
    """

    def training_step(self, batch: SFTBatch, batch_idx: int):
        logp = token_logprobs(
            self.model,
            batch.input_ids,
            batch.attention_mask,
            chunk_tokens=self.logprob_chunk_tokens,
            **batch.model_inputs,
        )
        trained = batch.labels != IGNORE_INDEX  # the solution and <eos>
        loss = -(logp * trained).sum() / trained.sum().clamp(min=1)  # mean token cross-entropy
        step = self.trainer.fit_loop.epoch_loop.batch_progress.total.completed
        if not self.guard.allows(loss, agree=self.agree):
            log_iteration(self.trainer, {"train/skipped_steps": self.guard.skipped}, step)
            return None  # Lightning then takes no backward and no optimizer step
        log_iteration(self.trainer, {"train/loss": loss.detach(), "train/skipped_steps": self.guard.skipped}, step)
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(batch.input_ids))
        return loss
