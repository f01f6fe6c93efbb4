"""SFTModule: the long-CoT warm-up — next-token cross-entropy on worked solutions."""

from __future__ import annotations

from k15.data.sft import SFTBatch
from k15.module import LanguageModule


class SFTModule(LanguageModule):
    """Supervised fine-tuning on prompt → worked solution; loss only on the solution tokens.

    Args: see ``LanguageModule``.
    """

    def training_step(self, batch: SFTBatch, batch_idx: int):
        loss = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels, **batch.model_inputs).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.input_ids))
        return loss
