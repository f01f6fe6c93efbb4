"""SFTModule: the long-CoT warm-up — next-token cross-entropy on worked solutions."""

from __future__ import annotations

from k15.data.sft import SFTBatch
from k15.language_module import LanguageModule
from k15.metrics import log_iteration


class SFTModule(LanguageModule):
    """Supervised fine-tuning on prompt → worked solution; loss only on the solution tokens.

    Args: see ``LanguageModule``.
    """

    def training_step(self, batch: SFTBatch, batch_idx: int):
        loss = self.model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels, **batch.model_inputs
        ).loss
        step = self.trainer.fit_loop.epoch_loop.batch_progress.total.completed
        if not self.guard.allows(loss, agree=self.agree):
            log_iteration(self.trainer, {"train/skipped_steps": self.guard.skipped}, step)
            return None  # Lightning then takes no backward and no optimizer step
        log_iteration(self.trainer, {"train/loss": loss, "train/skipped_steps": self.guard.skipped}, step)
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=len(batch.input_ids))
        return loss
