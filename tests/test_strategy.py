"""FSDP2Strategy: mixed precision and CPU offload from YAML reach fully_shard; bad values name the key."""

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from k15.language_module import shard_decoder
from k15.logprobs import token_logprobs
from k15.models import TinyQwen2
from k15.strategy import FSDP2Strategy


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def test_bf16_compute_with_fp32_master_weights_and_gradients(one_rank):
    """param_dtype bfloat16, reduce_dtype float32: the forward runs in bf16, while the sharded
    parameters (what the optimizer steps) and their gradients stay fp32."""
    policies = FSDP2Strategy(param_dtype="bfloat16", reduce_dtype="float32").fsdp_kwargs()
    assert set(policies) == {"mp_policy"}
    model = TinyQwen2("0123456789+=").model().train()
    seen = []
    model.model.layers[0].register_forward_hook(lambda module, args, out: seen.append(out[0].dtype))
    shard_decoder(model, one_rank, **policies)
    ids = torch.randint(4, 16, (2, 9))
    token_logprobs(model, ids, torch.ones_like(ids)).sum().backward()
    assert seen == [torch.bfloat16]
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())


def test_cpu_offload_policy_keeps_the_shards_on_the_host(one_rank):
    policies = FSDP2Strategy(cpu_offload=True).fsdp_kwargs()
    assert type(policies["offload_policy"]).__name__ == "CPUOffloadPolicy"
    model = TinyQwen2("0123456789+=").model().train()
    shard_decoder(model, one_rank, **policies)
    ids = torch.randint(4, 16, (2, 9))
    token_logprobs(model, ids, torch.ones_like(ids)).sum().backward()
    assert all(p.to_local().device.type == "cpu" and p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"param_dtype": "bf16"}, "param_dtype"),
        ({"reduce_dtype": "fp32"}, "reduce_dtype"),
        ({"sequence_parallel_size": 0}, "sequence_parallel_size"),
    ],
)
def test_bad_values_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=f"trainer.strategy.init_args.{key}"):
        FSDP2Strategy(**kwargs)


@pytest.mark.gpu
def test_bf16_mixed_precision_and_offload_on_a_gpu(tmp_path):
    """On CUDA (nccl, one rank): bf16 compute, fp32 reduction, shards offloaded to pinned host
    memory; the gradients reach the fp32 host shards, and a whole update (computing on the GPU
    while the weights live on the host) moves them."""
    from test_update import ROLLOUT_ARGS, rollout_of

    from k15.finite import FiniteGuard
    from k15.losses import KimiLoss
    from k15.update import update_policy

    dist.init_process_group("nccl", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        policies = FSDP2Strategy(param_dtype="bfloat16", reduce_dtype="float32", cpu_offload=True).fsdp_kwargs()
        model = TinyQwen2("0123456789+=,:AQ").model().cuda().train()
        shard_decoder(model, init_device_mesh("cuda", (1,)), **policies)
        ids = torch.randint(4, 16, (2, 64), device="cuda")
        token_logprobs(model, ids, torch.ones_like(ids)).sum().backward()
        assert all(p.to_local().device.type == "cpu" and p.grad.dtype == torch.float32 for p in model.parameters())
        before = [p.full_tensor().clone() for p in model.parameters()]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        update_policy(
            model,
            rollout_of(*ROLLOUT_ARGS).to("cuda"),
            KimiLoss(0.5),
            optimizer,
            None,
            generator=torch.Generator().manual_seed(0),
            guard=FiniteGuard(3),
            max_tokens_per_micro_batch=12,
            device=torch.device("cuda"),
        )
        assert any(not torch.equal(a, p.full_tensor()) for a, p in zip(before, model.parameters(), strict=True))
    finally:
        dist.destroy_process_group()
