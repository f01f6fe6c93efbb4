"""Rollout throughput: k15's rollout path on vLLM vs raw ``LLM.generate``, and vs the HF engine.

    python tools/bench/rollout.py [--prompts 32 --k 8 --max-new-tokens 128 --repeats 3]

One tiny Qwen2 (``k15.models.TinyQwen2``, random weights) is served three ways, on the same
prompts from ``shards/addition`` with the same sampling parameters (raw and k15 on vLLM draw the
very same samples: same engine, same seeds); throughput = generated tokens / wall seconds:

    raw_vllm   ``LLM.generate`` on the very engine k15 built (token ids in, nothing else)
    k15_vllm   ``RolloutSampler.rollout`` on ``VLLMEngine``: generate + decode + reward + packing
    k15_hf     the same rollout path on ``HFEngine`` (HF ``generate``)

Each is timed ``--repeats`` times after a warm-up (median). Prints one JSON
line: ``vs_raw_vllm`` = k15_vllm / raw_vllm (1 − framework overhead), ``vs_hf`` = k15_vllm / k15_hf.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch
from timing import median_seconds

from k15.data.arithmetic import ALPHABET
from k15.data.prompts import prompt_batch
from k15.data.shards import read_records, shard_urls
from k15.models import TinyQwen2
from k15.reward import RewardModule
from k15.rollout import HFEngine, RolloutSampler
from k15.rollout.vllm import VLLMEngine

SHARDS = Path(__file__).resolve().parents[2] / "shards" / "addition"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    source = TinyQwen2(ALPHABET, max_position_embeddings=512)
    tokenizer, model = source.tokenizer(), source.model()
    records = list(itertools.islice(read_records(shard_urls(str(SHARDS / "train-*.tar.gz"))), args.prompts))
    batch = prompt_batch(records, tokenizer)
    reward = RewardModule()

    def tokens_per_s(path: RolloutSampler) -> float:
        return path.rollout(batch, tokenizer, reward, 0).num_tokens / median_seconds(
            lambda: path.rollout(batch, tokenizer, reward, 0), args.repeats
        )

    # HF first: creating the vLLM engine binds this process's OpenMP threads to cores
    hf_engine = HFEngine()
    hf_engine.sync(model)
    hf_tps = tokens_per_s(
        RolloutSampler(hf_engine, samples_per_prompt=args.k, max_new_tokens=args.max_new_tokens, seed=0)
    )

    engine = VLLMEngine(max_model_len=512, kv_cache_gib=0.5)
    engine.sync(model)
    # seeds as k15's engine gives them (prompt p's samples: p·k, p·k + 1, …), so both draw the same samples
    params = [
        engine.vllm.SamplingParams(
            n=args.k,
            max_tokens=args.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            seed=p * args.k,
            logprobs=0,
            stop_token_ids=engine.eos_token_ids,
            detokenize=False,
        )
        for p in range(len(batch.prompt_ids))
    ]
    raw_prompts = [{"prompt_token_ids": ids} for ids in batch.prompt_ids]

    def raw_generate() -> int:
        outputs = engine.llm.generate(raw_prompts, params, use_tqdm=False)
        return sum(len(c.token_ids) for out in outputs for c in out.outputs)

    raw_tps = raw_generate() / median_seconds(raw_generate, args.repeats)
    ours_tps = tokens_per_s(
        RolloutSampler(engine, samples_per_prompt=args.k, max_new_tokens=args.max_new_tokens, seed=0)
    )

    print(
        json.dumps(
            {
                "vs_raw_vllm": round(ours_tps / raw_tps, 3),
                "vs_hf": round(ours_tps / hf_tps, 3),
                "raw_vllm_tokens_per_s": round(raw_tps),
                "k15_vllm_tokens_per_s": round(ours_tps),
                "k15_hf_tokens_per_s": round(hf_tps),
                "prompts": args.prompts,
                "k": args.k,
                "max_new_tokens": args.max_new_tokens,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
