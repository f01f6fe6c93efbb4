"""LoRA adapters, over a frozen 4-bit base for QLoRA: how one or two GPUs train a 7B–14B policy with RL.

Each target linear layer's weight W [out, in] is frozen and a low-rank update is trained beside it:

    y = x W̃ᵀ + s · x Aᵀ Bᵀ,     A ∈ R^{r × in}, B ∈ R^{out × r}, s = α / r (B = 0 at the start: y = x W̃ᵀ)

QLoRA stores W̃ = dequant(NF4(W)): 4-bit NormalFloat codes in blocks of 64, each block's absmax
quantized again (double quantization), about 4.13 bits a weight instead of 16. The fsdp-qlora
technique makes that shardable: the packed codes are stored in the model's own dtype
(bitsandbytes ``quant_storage``), so FSDP2's ``fully_shard`` splits and gathers them as it does any
parameter of that dtype, while each rank keeps the small quantization state of its layers whole.

The engine gets ordinary weights (vLLM loads no 4-bit LoRA-wrapped model): every sync merges

    W_engine = dequant(W̃) + s · B A

layer by layer (``merged_weights``), which is exactly what the trained model computes. Exports
write both the merged model and the adapters on their own (peft's format).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

Named = tuple[str, Tensor]
QWEN2_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER = "default"  # peft's adapter name; one adapter per model here


class LoRA:
    """Low-rank adapters on the policy's linear layers, the base frozen (in 4-bit NF4 for QLoRA).

    Args:
        rank: r, the adapters' inner dimension.
        alpha: α; the update is scaled by s = α / r.
        dropout: dropout on the adapters' input (0: none, and sampling stays deterministic).
        target_modules: names of the linear layers that get adapters (Qwen2/Llama: attention and MLP).
        quantize_base: the frozen base of the target layers in 4-bit NF4 (QLoRA); false: plain LoRA.
        double_quant: quantize the NF4 blocks' absmax too (0.37 → 0.13 bits a weight).
    """

    def __init__(
        self,
        rank: int = 16,
        alpha: float = 32.0,
        dropout: float = 0.0,
        target_modules: list[str] | tuple[str, ...] = QWEN2_LINEARS,
        quantize_base: bool = True,
        double_quant: bool = True,
    ):
        if rank < 1:
            raise ValueError(f"model.lora.rank must be ≥ 1, got {rank}")
        if not target_modules:
            raise ValueError("model.lora.target_modules: name at least one linear layer (e.g. q_proj)")
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = tuple(target_modules)
        self.quantize_base = quantize_base
        self.double_quant = double_quant

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=list(self.target_modules)
        )

    def apply(self, model: nn.Module, device: torch.device) -> None:
        """In place: quantize the target layers' base (on ``device``, where bitsandbytes quantizes),
        add the adapters, freeze everything else. The model keeps its class, so generation, sharding
        and ``save_pretrained`` see the model they know."""
        from peft import inject_adapter_in_model

        found = targets(model, self.target_modules)
        missing = set(self.target_modules) - {name.rsplit(".", 1)[-1] for name in found}
        if missing:
            raise ValueError(
                f"model.lora.target_modules: {type(model).__name__} has no linear layer named {sorted(missing)}"
            )
        if self.quantize_base:
            for name in found:
                quantize_linear(model, name, device, self.double_quant)
        model.requires_grad_(False)
        inject_adapter_in_model(self.peft_config(), model, adapter_name=ADAPTER)  # adapters train; the rest stays


def targets(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Qualified names of ``model``'s ``nn.Linear`` layers whose own name is one of ``names``."""
    names = set(names)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in names]


def quantize_linear(model: nn.Module, name: str, device: torch.device, double_quant: bool) -> None:
    """Replace linear layer ``name`` by a frozen bitsandbytes NF4 ``Linear4bit`` of the same weights.

    The packed codes are stored in the weight's own dtype (``quant_storage``), as fsdp-qlora does
    (FSDP1's flat parameters take one dtype). FSDP2 gathers mixed dtypes as bytes, but casts every
    parameter to its ``param_dtype``: with that null or the model's dtype, the codes are never
    converted as numbers. The bias stays as it was (frozen)."""
    import bitsandbytes as bnb

    linear = model.get_submodule(name)
    dtype = linear.weight.dtype
    quantized = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=dtype,
        compress_statistics=double_quant,
        quant_type="nf4",
        quant_storage=dtype,
        device="meta",
    )
    quantized.weight = bnb.nn.Params4bit(
        linear.weight.data,
        requires_grad=False,
        compress_statistics=double_quant,
        quant_type="nf4",
        quant_storage=dtype,
        module=quantized,
    )._quantize(device)
    if linear.bias is not None:
        quantized.bias = nn.Parameter(linear.bias.data.to(device), requires_grad=False)
    # bitsandbytes repacks a CPU layer's codes for its bf16 kernel on an eval-mode no-grad forward,
    # in place and in a layout its training path cannot read: held-out evaluation would break the next update
    quantized.support_avx512bf16_for_cpu = False
    # the base is rebuilt from the source at every start, so a checkpoint's copy of the quantization
    # state (which Linear4bit writes but cannot read back) is dropped on load
    quantized._register_load_state_dict_pre_hook(drop_quant_state)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, quantized)


def drop_quant_state(state_dict: dict, prefix: str, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "weight.")]:
        del state_dict[key]


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The adapter-wrapped layers (peft ``LoraLayer``), by qualified name."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def packed_weight_names(model: nn.Module) -> set[str]:
    """State-dict names of the 4-bit bases' packed codes (stored in a float dtype, never to be cast)."""
    import bitsandbytes as bnb

    return {
        f"{name}.base_layer.weight"
        for name, layer in lora_layers(model).items()
        if isinstance(layer.get_base_layer(), bnb.nn.Linear4bit)
    }


def base_weight(layer: nn.Module, weight: Tensor) -> Tensor:
    """W̃ of an adapter-wrapped layer, from its base's (full, gathered) ``weight``: dequantized if 4-bit."""
    import bitsandbytes as bnb

    base = layer.get_base_layer()
    if not isinstance(base, bnb.nn.Linear4bit):
        return weight
    # the module keeps the state whole on every rank; the weight may be a gathered copy without it
    return bnb.functional.dequantize_4bit(weight, base.quant_state).to(base.compute_dtype)


def merged_weights(model: nn.Module, named: Iterable[Named], dtype: torch.dtype | None = None) -> Iterator[Named]:
    """``named`` (the model's state dict as full tensors, in any order) with every adapter-wrapped
    layer's entries replaced by the plain layer's: ``<layer>.weight`` = W̃ + s · B A (in ``dtype``;
    None: the base's) and ``<layer>.bias``; the 4-bit quantization state is dropped. Other entries
    pass through.

    Lazy: a layer's pieces wait only until its last one arrives, so memory stays one layer's worth."""
    layers = lora_layers(model)
    pending: dict[str, dict[str, Tensor]] = {}
    for name, tensor in named:
        layer_name, part = split_lora_name(name, layers)
        if layer_name is None:
            yield name, tensor
            continue
        if part == "bias":
            yield f"{layer_name}.bias", tensor
            continue
        if part is None:  # quantization state
            continue
        parts = pending.setdefault(layer_name, {})
        parts[part] = tensor
        if len(parts) == 3:
            del pending[layer_name]
            yield f"{layer_name}.weight", merged_weight(layers[layer_name], dtype=dtype, **parts)
    if pending:
        raise ValueError(f"merged_weights: incomplete layers {sorted(pending)}")


def split_lora_name(name: str, layers: dict[str, nn.Module]) -> tuple[str | None, str | None]:
    """(layer, part) of a state-dict entry: part is ``weight``, ``bias``, ``lora_A`` or ``lora_B``,
    None for 4-bit quantization state; (None, None) if ``name`` is not an adapter-wrapped layer's."""
    for marker, part in ((".base_layer.", None), (f".lora_A.{ADAPTER}.", "lora_A"), (f".lora_B.{ADAPTER}.", "lora_B")):
        layer_name, found, rest = name.partition(marker)
        if found and layer_name in layers:
            if part is not None:
                return layer_name, part
            return layer_name, rest if rest in ("weight", "bias") else None
    return None, None


def merged_weight(
    layer: nn.Module, weight: Tensor, lora_A: Tensor, lora_B: Tensor, dtype: torch.dtype | None = None
) -> Tensor:
    """W̃ + s · B A of one adapter-wrapped layer, summed in fp32, returned in ``dtype`` (None: W̃'s)."""
    base = base_weight(layer, weight)
    delta = (lora_B.to(torch.float32) @ lora_A.to(torch.float32)) * layer.scaling[ADAPTER]
    return (base.to(torch.float32) + delta).to(dtype or base.dtype)


def adapter_state(model: nn.Module, full_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The adapters alone, in peft's names (what ``PeftModel.from_pretrained`` loads), from a full state dict."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, state_dict=full_state, adapter_name=ADAPTER)
