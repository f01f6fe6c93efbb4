"""ZeRO3Strategy: Lightning's ``DeepSpeedStrategy`` at ZeRO stage 3, set from YAML and fitted to k15's
manual-optimization update; and the policy's full weights, gathered bucket by bucket for the engine.

ZeRO-3 over R ranks, Ψ parameters:

    every parameter is flattened and cut into R equal parts (the last padded); rank r keeps part r of
      the weights (bf16), of the fp32 master weights and of the optimizer state (Adam's m, v)
    forward / backward of a module: all-gather its parameters, compute, free them again
    backward: gradients reduce-scattered, rank r gets part r of (1/R) Σ_r' g_r', summed over a
      step's micro-batches in fp32
    memory a rank ≈ (2 + 4 + 4 + 8) Ψ / R bytes (weights, gradients, master, m and v), + one module gathered
    offload_parameters / offload_optimizer: the weight parts / master, gradient and optimizer parts
      live in host memory (the optimizer then steps on the host)

Where k15's update (``k15.update``) departs from a plain DeepSpeed loop, and what this file does about it:

  * micro-batches: DeepSpeed starts a micro-step (sums the next backward's gradients into the
    partitions instead of overwriting them) in ``engine.forward``. Lightning runs the whole
    ``training_step`` — every micro-batch — inside one ``engine.forward``, so each backward would
    replace the last one's gradient. ``start_micro_step`` runs before every backward.
  * the gradient norm: ``p.grad`` is None between backward and step (the gradient lives in the
    optimizer's partitions), so ``zero3_gradient_norm`` sums the ranks' parts; clipping is the
    ZeRO-3 optimizer's own, in its step (by min(1, c / (‖g‖ + 1e-6)), as ``clip_grad_norm_``).
  * full weights: a parameter outside a gather is an empty placeholder; the engine sync gathers
    ``bucket_bytes`` of them at a time (``k15.rollout.weights.zero3_full_weights``), the export
    the fp32 master weights (``zero3_master_weights``).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor, nn

KEY = "trainer.strategy.init_args"
# set elsewhere in k15's YAML, so a DeepSpeed copy of them would be ignored or would conflict
OWNED_BY_K15 = {
    "optimizer": "model.optimizer",
    "scheduler": "model.lr_scheduler",
    "gradient_clipping": "model.gradient_clip_norm",
    "gradient_accumulation_steps": "model.max_tokens_per_micro_batch (micro-batches of a step)",
}


def merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` written over it, nested dicts merged key by key."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def zero3_config(
    bf16: bool,
    fp32_gradient_accumulation: bool,
    offload_parameters: bool,
    offload_optimizer: bool,
    param_persistence_threshold: int,
    overrides: dict,
) -> dict:
    """The DeepSpeed config of the strategy's arguments, with ``overrides`` merged over it."""
    pin = torch.cuda.is_available()  # page-locked host memory speeds host↔GPU copies; a CPU has nothing to pin for
    zero = {"stage": 3, "stage3_param_persistence_threshold": param_persistence_threshold}
    if offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    config = {
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        # DeepSpeed's throughput log only: k15's micro-batches are token budgets, not sample counts
        "train_micro_batch_size_per_gpu": 1,
        # the optimizer is model.optimizer, whatever it is (DeepSpeed tests a few; AdamW is among them)
        "zero_allow_untested_optimizer": True,
        # with offload DeepSpeed would insist on its own CPU Adam (compiled at first use); this lets
        # model.optimizer stand (choose deepspeed.ops.adam.DeepSpeedCPUAdam there for its speed)
        "zero_force_ds_cpu_optimizer": False,
    }
    if bf16 and fp32_gradient_accumulation:
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return merged(config, overrides)


class _Reads(dict):
    """A config that records the top-level keys looked up in it (by [], get, in or keys())."""

    def __init__(self, config: dict):
        super().__init__(config)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def keys(self):
        return _KeysRead(super().keys(), self.read)


class _KeysRead(set):
    def __init__(self, keys, read: set[str]):
        super().__init__(keys)
        self.read = read

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def block_path(config: dict, loc: tuple) -> str:
    """The dotted path in ``config`` of ``loc``, a path within one of its blocks (as pydantic reports it)."""
    for block, value in config.items():
        for step in loc[:-1]:
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, dict) and loc[-1] in value:
            return ".".join(map(str, (block, *loc)))
    return ".".join(map(str, loc))


def check_config(config: dict) -> None:
    """Raise ``ValueError`` naming ``trainer.strategy.init_args.config.<key>`` for a key DeepSpeed would
    reject or ignore, a key k15 sets elsewhere, or a stage other than 3.

    DeepSpeed's own parser (``DeepSpeedConfig``) rejects unknown keys inside its blocks but reads
    top-level keys one by one and never looks at the others: a misspelt one would be silently
    ignored. So the parse runs on a dict that records what it looked up, and a key left unread is an error.
    """
    from deepspeed.runtime.config import DeepSpeedConfig

    for key, where in OWNED_BY_K15.items():
        if key in config:
            raise ValueError(f"{KEY}.config.{key}: k15 sets this itself, from {where}")
    stage = config.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise ValueError(f"{KEY}.config.zero_optimization.stage must be 3 for ZeRO3Strategy, got {stage!r}")
    seen = _Reads(config | {"gradient_accumulation_steps": 1})  # as Lightning completes it at setup
    try:
        DeepSpeedConfig(seen)
    except ValueError as error:
        if not hasattr(error, "errors"):
            raise
        first = error.errors()[0]  # pydantic's: loc is the path within one block
        raise ValueError(f"{KEY}.config.{block_path(config, first['loc'])}: {first['msg']}") from error
    unknown = sorted(set(config) - seen.read)
    if unknown:
        raise ValueError(f"{KEY}.config.{unknown[0]}: not a DeepSpeed setting (misspelt?); unknown: {unknown}")


def check_precision(precision: str) -> None:
    """Raise unless ``trainer.precision`` is 32-true: bf16 is the strategy's (Lightning's bf16 under
    DeepSpeed would also cast the batch's float tensors, rewards among them, to bf16)."""
    if precision != "32-true":
        raise ValueError(
            f"trainer.precision is {precision!r}: with ZeRO3Strategy leave it at 32-true and set {KEY}.bf16 "
            "(DeepSpeed's bf16 weights with fp32 master weights)"
        )


class ZeRO3Strategy(DeepSpeedStrategy):
    """DeepSpeed ZeRO stage 3 over every rank (GPUs only: Lightning refuses other accelerators).

    Args:
        bf16: bf16 weights for forward and backward, with fp32 master weights and optimizer state
            (DeepSpeed's bf16 mode; set it here, not with ``trainer.precision``).
        fp32_gradient_accumulation: sum a step's micro-batch gradients in fp32 (bf16 sums lose the
            low bits of many small terms); with ``bf16`` only.
        offload_parameters: keep the weight partitions in host memory, fetched per module.
        offload_optimizer: keep the fp32 master weights, gradients and optimizer state in host
            memory; the optimizer steps there.
        param_persistence_threshold: parameters of fewer elements stay whole on every rank (no
            gather per forward for norms and biases; 0: partition everything).
        config: DeepSpeed config entries merged over the ones above (https://www.deepspeed.ai/docs/config-json/),
            e.g. ``{zero_optimization: {stage3_max_live_parameters: 1e9}}``; checked at start-up.
    """

    def __init__(
        self,
        bf16: bool = True,
        fp32_gradient_accumulation: bool = True,
        offload_parameters: bool = False,
        offload_optimizer: bool = False,
        param_persistence_threshold: int = 100_000,
        config: dict[str, Any] | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ):
        if param_persistence_threshold < 0:
            raise ValueError(f"{KEY}.param_persistence_threshold must be ≥ 0, got {param_persistence_threshold}")
        built = zero3_config(
            bf16,
            fp32_gradient_accumulation,
            offload_parameters,
            offload_optimizer,
            param_persistence_threshold,
            config or {},
        )
        check_config(built)
        super().__init__(config=built, process_group_backend=process_group_backend, timeout=timeout)

    def setup_environment(self) -> None:
        check_precision(self.precision_plugin.precision)
        super().setup_environment()

    @contextmanager
    def model_sharded_context(self):
        """``configure_model`` under ``deepspeed.zero.Init`` (each parameter partitioned as it is made),
        with transformers told of ZeRO-3: only then does ``from_pretrained`` load its weights into
        the partitions (rank 0 reads, the others receive) instead of failing on empty placeholders."""
        from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

        with super().model_sharded_context():
            hf = HfDeepSpeedConfig(self.config)  # noqa: F841 — transformers keeps only a weak reference to it
            try:
                yield
            finally:
                unset_hf_deepspeed_config()

    def pre_backward(self, closure_loss: Tensor) -> None:
        super().pre_backward(closure_loss)
        start_micro_step(self.deepspeed_engine)


def start_micro_step(engine) -> None:
    """What ``engine.forward`` does before a micro-batch: the next backward's gradients are then added
    to the ones since the last optimizer step (the first after a step or ``zero_grad`` overwrites)."""
    engine.optimizer.clear_backward_seen_flag()


def zero3_optimizer(optimizer) -> bool:
    """Whether ``optimizer`` is DeepSpeed's ZeRO-3 optimizer (never, if DeepSpeed was not even imported)."""
    stage3 = sys.modules.get("deepspeed.runtime.zero.stage3")
    return stage3 is not None and isinstance(optimizer, stage3.DeepSpeedZeroOptimizer_Stage3)


def zero3_gradient_norm(optimizer, max_norm: float | None) -> Tensor:
    """‖g‖ = (Σ_r Σ_p ‖g_p,r‖²)^½ over every rank's gradient partitions g_p,r of the step so far,
    and clipping to ``max_norm`` set for the optimizer's coming step (None: off).

    The norm is the caller's to check before stepping: DeepSpeed's own replaces inf/NaN by −1."""
    from deepspeed.utils import safe_get_local_grad

    # fp16_groups: DeepSpeed's name for the model's (partitioned) parameters, whatever their dtype
    parts = [safe_get_local_grad(p) for group in optimizer.fp16_groups for p in group]
    squares = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32).square() for g in parts]).sum()
    dist.all_reduce(squares, group=optimizer.dp_process_group)
    optimizer.clip_grad = max_norm or 0.0
    return squares.sqrt()


def zero3_partitioned(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are ZeRO-3 partitions (built under ``deepspeed.zero.Init`` or
    wrapped by a ZeRO-3 engine)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def zero3_master_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """``model``'s state dict as full fp32 master weights on the host, one parameter gathered at a
    time (every rank must take part): what an export keeps, not the bf16 copies the forward uses."""
    from deepspeed.utils import safe_get_full_fp32_param

    for name, tensor in model.state_dict(keep_vars=True).items():
        full = safe_get_full_fp32_param(tensor) if hasattr(tensor, "ds_id") else tensor
        yield name, full.detach().cpu()
