"""ExportPretrained: write the trained policy as a ``save_pretrained`` folder at the end of fit.

The folder (model + tokenizer, + processor for a vision-language model) loads with
``AutoModelForCausalLM.from_pretrained`` and vLLM, and is what ``k15.models.Pretrained`` starts the
next stage from. Non-finite weights are never written.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from k15.finite import require_finite_weights


class ExportPretrained(Callback):
    """Args:
    dirpath: output folder (overwritten).
    """

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        require_finite_weights(
            pl_module.model,
            f"the export to {self.dirpath}",
            lambda ok: trainer.strategy.reduce_boolean_decision(ok, all=True),
        )
        # every rank joins the gather of sharded (FSDP2) weights; rank 0 writes
        state = get_model_state_dict(pl_module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if trainer.is_global_zero:
            pl_module.model.save_pretrained(self.dirpath, state_dict=state)
            (pl_module.processor or pl_module.tokenizer).save_pretrained(
                self.dirpath
            )  # a processor saves its tokenizer too
