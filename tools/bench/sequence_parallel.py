"""Sequence parallelism: peak memory and time per rank of one long trajectory's forward + backward,
degree 1 (one process) vs degree 2 (two gloo processes splitting the row, Ulysses).

    python tools/bench/sequence_parallel.py [--tokens 8192 --layers 4 --hidden 128]

A Qwen2 with the real 152,064-token vocabulary, small hidden size, no activation checkpointing
(so the activations that scale with tokens show), one trajectory of ``--tokens`` tokens through
``k15.logprobs.token_scores``, backward of Σ log π. Peak = ru_maxrss − resident memory just
before (the model, its gradients and the process's libraries are not counted). Both degrees run
on this machine's two cores, so degree 2's time is no speedup figure: each rank has one core.
Prints one JSON line: each degree's per-rank peak and seconds, ``peak_ratio`` = degree 2 / degree 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

VOCAB = 152_064


def measure(rank: int, degree: int, args, folder: str) -> dict:
    import torch
    import torch.distributed as dist
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from k15.logprobs import token_scores
    from k15.sequence_parallel import enable_sequence_parallel

    torch.set_num_threads(1 if degree > 1 else 2)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=args.tokens,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).train()
    if degree > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=degree)
        enable_sequence_parallel(model, dist.group.WORLD)
    ids = torch.randint(0, VOCAB, (1, args.tokens), generator=torch.Generator().manual_seed(1))
    for p in model.parameters():  # gradients allocated before the baseline: the peak is what scales with tokens
        p.grad = torch.zeros_like(p)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/self/statm") as f:
        resident = int(f.read().split()[1]) * resource.getpagesize()
    start = time.perf_counter()
    token_scores(model, ids, torch.ones_like(ids), chunk_tokens=args.chunk).logp.sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - max(before, resident)
    if degree > 1:
        dist.destroy_process_group()
    return {"peak_gb": round(peak / 2**30, 3), "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=256, help="logprob_chunk_tokens")
    parser.add_argument("--run", nargs=3, type=str, help=argparse.SUPPRESS)  # rank degree folder, in a child
    args = parser.parse_args()
    if args.run:
        rank, degree, folder = int(args.run[0]), int(args.run[1]), args.run[2]
        print(json.dumps(measure(rank, degree, args, folder)))
        return
    common = [f"--tokens={args.tokens}", f"--layers={args.layers}", f"--hidden={args.hidden}", f"--chunk={args.chunk}"]
    results = {}
    for degree in (1, 2):
        with tempfile.TemporaryDirectory() as folder:
            children = [
                subprocess.Popen(
                    [sys.executable, __file__, *common, "--run", str(rank), str(degree), folder],
                    stdout=subprocess.PIPE,
                    text=True,
                    env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"},
                )
                for rank in range(degree)
            ]
            ranks = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
        results[f"degree_{degree}"] = {
            "peak_gb_per_rank": max(r["peak_gb"] for r in ranks),
            "seconds": max(r["seconds"] for r in ranks),
        }
        print(degree, results[f"degree_{degree}"], file=sys.stderr)
    one, two = results["degree_1"], results["degree_2"]
    print(
        json.dumps(
            {
                "tokens": args.tokens,
                "layers": args.layers,
                "hidden": args.hidden,
                "vocab": VOCAB,
                "peak_ratio": round(two["peak_gb_per_rank"] / one["peak_gb_per_rank"], 3),
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()
