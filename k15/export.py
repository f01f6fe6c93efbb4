"""ExportPretrained: write the trained policy as a ``save_pretrained`` folder at the end of fit.

The folder (model + tokenizer, + processor for a vision-language model) loads with
``AutoModelForCausalLM.from_pretrained`` and vLLM, and is what ``k15.models.Pretrained`` starts the
next stage from. Non-finite weights are never written.

A LoRA / QLoRA policy is written merged (W̃ + s · B A: a plain model, as the engine sees it) and its
adapters on their own in ``<dirpath>/adapter`` (peft's format: ``PeftModel.from_pretrained(base, …)``).
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from k15.deepspeed import zero3_master_weights, zero3_partitioned
from k15.finite import require_finite_weights
from k15.lora import adapter_state, lora_layers, merged_weights


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
        # every rank joins the gather of sharded (FSDP2) or partitioned (ZeRO-3) weights; rank 0 writes
        if zero3_partitioned(pl_module.model):
            state = dict(zero3_master_weights(pl_module.model))
        else:
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(pl_module.model, options=options)
        if trainer.is_global_zero:
            model = pl_module.model
            if lora_layers(model):
                adapter = adapter_state(model, state)
                save_adapter(model, pl_module.lora.peft_config(), adapter, f"{self.dirpath}/adapter")
                state = dict(merged_weights(model, state.items()))
            model.save_pretrained(self.dirpath, state_dict=state)
            (pl_module.processor or pl_module.tokenizer).save_pretrained(
                self.dirpath
            )  # a processor saves its tokenizer too


def save_adapter(model, config, state: dict, dirpath: str) -> None:
    """peft's adapter folder: ``adapter_config.json`` (with the base model it applies to) and the weights."""
    from safetensors.torch import save_file

    config.base_model_name_or_path = model.config.name_or_path or None
    config.save_pretrained(dirpath)
    # the names PeftModel.save_pretrained writes: the adapters' paths inside a PeftModel
    tensors = {f"base_model.model.{k}": v.contiguous() for k, v in state.items()}
    save_file(tensors, f"{dirpath}/adapter_model.safetensors")
