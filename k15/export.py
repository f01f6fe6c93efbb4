"""ExportPretrained: write the trained policy as a ``save_pretrained`` folder at the end of fit.

The folder (model + tokenizer) loads with ``AutoModelForCausalLM.from_pretrained`` and vLLM, and
is what ``k15.models.Pretrained`` starts the next stage from.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer


class ExportPretrained(Callback):
    """Args:
    dirpath: output folder (overwritten).
    """

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            pl_module.model.save_pretrained(self.dirpath)
            pl_module.tokenizer.save_pretrained(self.dirpath)
