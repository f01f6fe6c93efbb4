"""The policy's full weights, one bucket at a time, from a model whose parameters may be FSDP2 shards.

An engine on every rank needs every full tensor, but no rank may hold the whole model twice
(its shard of the trainer's copy plus the engine's copy already fill a GPU at 7B). So the
weights travel in buckets of about ``bucket_bytes``: each bucket's local shards are packed
into one flat buffer, cast to the engine's dtype, gathered with a single ``all_gather``
(one collective per bucket, not one per parameter), and cut back into full tensors, which the
engine consumes before the next bucket is gathered:

    rank r holds rows [r·c, (r+1)·c) of every sharded tensor (FSDP2 ``Shard(0)``, c = ⌈n / R⌉)
    bucket → flat [Σ c·rest] per rank → all_gather → [R, Σ c·rest] → each tensor's R slices, trimmed to n rows

Every rank walks the same tensors in the same order (``state_dict`` order), so the collectives match.
A tensor that is not a DTensor (a single process, or a replicated buffer) is passed as it is.
Under DeepSpeed ZeRO-3 the parameters are partitions, not DTensors: ``zero3_full_weights``
gathers the same buckets with ``GatheredParameters``.
"""

from __future__ import annotations

from collections.abc import Container, Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from k15.deepspeed import zero3_partitioned
from k15.lora import lora_layers, merged_weights, packed_weight_names

Named = tuple[str, Tensor]


def sharded_rows(tensor: Tensor) -> bool:
    """A DTensor split along dim 0 over a one-dimensional mesh: what ``fully_shard`` makes."""
    from torch.distributed.tensor import DTensor, Shard

    return isinstance(tensor, DTensor) and tensor.device_mesh.ndim == 1 and tensor.placements == (Shard(0),)


def buckets(named: list[Named], bucket_bytes: int, dtype: torch.dtype) -> Iterator[list[Named]]:
    """``named`` split in order into runs of at most ``bucket_bytes`` in ``dtype`` (one tensor
    larger than that makes a bucket of its own)."""
    bucket, size = [], 0
    for name, tensor in named:
        nbytes = tensor.numel() * dtype.itemsize
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def gather_bucket(bucket: list[Named], dtype: torch.dtype) -> list[Named]:
    """Full tensors of ``bucket``'s row-sharded DTensors, with one all_gather over their mesh."""
    mesh = bucket[0][1].device_mesh
    world, group = mesh.size(), mesh.get_group()
    parts = []
    for _, tensor in bucket:
        rows = -(-tensor.shape[0] // world)  # c = ⌈n / R⌉: torch.chunk's split, as FSDP2 shards
        local = tensor.to_local().to(dtype)
        padded = local.new_zeros((rows, *tensor.shape[1:]))
        padded[: local.shape[0]] = local
        parts.append(padded.reshape(-1))
    flat = torch.cat(parts)
    gathered = flat.new_empty(world * flat.numel())
    dist.all_gather_into_tensor(gathered, flat, group=group)
    gathered = gathered.view(world, -1)
    out, offset = [], 0
    for (name, tensor), part in zip(bucket, parts, strict=True):
        slices = gathered[:, offset : offset + part.numel()].reshape(world, -1, *tensor.shape[1:])
        out.append((name, slices.flatten(0, 1)[: tensor.shape[0]].clone()))
        offset += part.numel()
    return out


def full_weights(
    model: nn.Module, bucket_bytes: int, dtype: torch.dtype, packed: Container[str] = ()
) -> Iterator[Named]:
    """``model``'s state dict as full tensors (in ``dtype``), gathered ``bucket_bytes`` at a time.

    Lazy: a bucket is gathered when the consumer reaches it, and freed once it has moved on, so
    at most one bucket of full tensors exists at once. Every rank must consume it to the end.
    Tensors named in ``packed`` (4-bit codes stored in a float dtype) keep their dtype: a cast
    would change their bits.
    """
    if zero3_partitioned(model):  # DeepSpeed ZeRO-3 partitions, not DTensors
        yield from zero3_full_weights(model, bucket_bytes, dtype)
        return
    named = list(model.state_dict().items())
    sharded = [(n, t) for n, t in named if sharded_rows(t)]
    whole = [(n, t.full_tensor() if hasattr(t, "full_tensor") else t) for n, t in named if not sharded_rows(t)]
    for name, tensor in whole:
        cast = tensor.is_floating_point() and name not in packed
        yield name, tensor.detach().to(dtype) if cast else tensor.detach()
    for bucket in buckets([(n, t) for n, t in sharded if n not in packed], bucket_bytes, dtype):
        yield from gather_bucket(bucket, dtype)
    codes = [(n, t) for n, t in sharded if n in packed]
    for bucket in buckets(codes, bucket_bytes, codes[0][1].dtype if codes else dtype):
        yield from gather_bucket(bucket, bucket[0][1].dtype)


def zero3_full_weights(model: nn.Module, bucket_bytes: int, dtype: torch.dtype) -> Iterator[Named]:
    """``model``'s state dict as full tensors (floating ones in ``dtype``), gathered ``bucket_bytes`` at a time.

    Every rank all-gathers a bucket of parameters (``GatheredParameters``, read-only), copies them
    out in ``dtype`` and frees the gather before yielding, so the full tensors held at once are one
    bucket's copies. Tied parameters (one tensor, two names) are gathered once and yielded under
    both names. Every rank must consume it to the end (all walk the same buckets in the same order).
    """
    from deepspeed.runtime.zero import GatheredParameters

    named = list(model.state_dict(keep_vars=True).items())
    for name, tensor in named:
        if not hasattr(tensor, "ds_id"):  # buffers: whole on every rank
            yield name, tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach()
    partitioned = [(n, t) for n, t in named if hasattr(t, "ds_id")]
    by_name = dict(partitioned)
    # sized by their full shape: outside a gather a partitioned parameter is an empty placeholder
    shapes = [(n, torch.empty(t.ds_shape, device="meta")) for n, t in partitioned]
    for bucket in buckets(shapes, bucket_bytes, dtype):
        params = [by_name[n] for n, _ in bucket]
        with GatheredParameters(list({id(p): p for p in params}.values()), modifier_rank=None):
            full = [(n, p.detach().to(dtype, copy=True)) for (n, _), p in zip(bucket, params, strict=True)]
        yield from full


def engine_weights(model: nn.Module, bucket_bytes: int, dtype: torch.dtype) -> Iterator[Named]:
    """What an inference engine loads: ``full_weights``, with LoRA adapters (over a 4-bit base for
    QLoRA) merged into plain weights, W̃ + s · B A (``k15.lora.merged_weights``)."""
    if not lora_layers(model):
        return full_weights(model, bucket_bytes, dtype)
    return merged_weights(model, full_weights(model, bucket_bytes, dtype, packed_weight_names(model)), dtype)
