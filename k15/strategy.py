"""FSDP2Strategy: Lightning's ``ModelParallelStrategy`` with what a long-context policy needs from
YAML — a data_parallel × sequence_parallel device mesh, mixed precision and CPU offload.

    world = data_parallel_size · sequence_parallel_size ranks
    mesh  = [data_parallel, sequence_parallel]: the ranks of one sequence-parallel group score one
            packed row together (``k15.sequence_parallel``); the policy is sharded over all ranks

``LanguageModule.configure_model`` calls ``fully_shard`` per decoder layer with ``fsdp_kwargs()``:
``MixedPrecisionPolicy(param_dtype, reduce_dtype)`` — e.g. bf16 parameters for compute with fp32
gradient reduction, while the sharded master weights and the optimizer state stay in the model's
own dtype — and ``CPUOffloadPolicy`` (parameters, gradients and optimizer state on the host,
moved in per layer: less GPU memory for more host traffic).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy, ParallelStrategy

DTYPES = ("float32", "bfloat16", "float16", "float64")


def torch_dtype(name: str | None, key: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"trainer.strategy.init_args.{key} must be one of {', '.join(DTYPES)} or null, got {name!r}")
    return getattr(torch, name)


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over every rank, with a sequence-parallel mesh dimension.

    Args:
        data_parallel_size: ranks that take different prompts ("auto": world / sequence_parallel_size).
        sequence_parallel_size: ranks that split one packed row between them (Ulysses); must divide
            the model's attention and KV heads. 1: off.
        param_dtype: dtype the sharded parameters are gathered to for forward and backward
            (null: the model's dtype, i.e. no mixed precision).
        reduce_dtype: dtype gradients are reduce-scattered in (null: ``param_dtype``).
        cpu_offload: keep parameters, gradients and optimizer state on the host.
        save_distributed_checkpoint: each rank writes its own shard (a checkpoint folder) instead
            of rank 0 gathering the whole model; resume reads either.
    """

    def __init__(
        self,
        data_parallel_size: Literal["auto"] | int = "auto",
        sequence_parallel_size: int = 1,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        cpu_offload: bool = False,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ):
        if sequence_parallel_size < 1:
            raise ValueError(
                f"trainer.strategy.init_args.sequence_parallel_size must be ≥ 1, got {sequence_parallel_size}"
            )
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=sequence_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.sequence_parallel_size = sequence_parallel_size
        self.param_dtype = torch_dtype(param_dtype, "param_dtype")
        self.reduce_dtype = torch_dtype(reduce_dtype, "reduce_dtype")
        self.cpu_offload = cpu_offload

    def setup_environment(self) -> None:
        ParallelStrategy.setup_environment(self)  # the accelerator; the mesh is ours, not the parent's
        self._setup_distributed()
        from torch.distributed.device_mesh import init_device_mesh

        sp = self.sequence_parallel_size
        dp = self.world_size // sp if self._data_parallel_size == "auto" else self._data_parallel_size
        if dp * sp != self.world_size:
            raise ValueError(
                f"trainer.strategy: data_parallel_size ({dp}) × sequence_parallel_size ({sp}) must equal the "
                f"number of processes ({self.world_size} = trainer.devices × trainer.num_nodes)"
            )
        self._device_mesh = init_device_mesh(
            self.root_device.type, (dp, sp), mesh_dim_names=("data_parallel", "sequence_parallel")
        )
        self.lightning_module._device_mesh = self._device_mesh

    @property
    def shard_mesh(self):
        """The 1-D mesh of every rank that ``fully_shard`` shards over (both dimensions flattened)."""
        return (
            self.device_mesh._flatten("data_sequence_parallel")
            if self.sequence_parallel_size > 1
            else (self.device_mesh["data_parallel"])
        )

    def fsdp_kwargs(self) -> dict:
        """``fully_shard``'s mixed-precision and offload policies, as configured."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

        kwargs = {}
        if self.param_dtype is not None or self.reduce_dtype is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype)
        if self.cpu_offload:
            # pinned host memory speeds up host↔GPU copies; with no accelerator there is nothing to pin for
            kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
        return kwargs
