"""Shortest rejection sampling (k1.5 §2.4): n samples per prompt from a long-CoT model, the shortest
correct one kept as an SFT example, and preference pairs against it for DPO.

    python tools/long2short_samples.py --model runs/tiny_long/hf \\
        --shards 'shards/addition/train-{000000..000009}.tar.gz' --prompts 2000 --samples 8 \\
        --out shards/short_sft --pairs-out shards/dpo_pairs

Then fine-tune the long model on the short solutions, or run DPO on the pairs:

    python -m k15 fit -c conf/long2short_sft.yaml
    python -m k15 fit -c conf/tiny_dpo.yaml

The first --prompts usable prompt records of --shards (text prompts only: image prompts are
skipped as has_images, as are prompts with no room for --max-new-tokens as too_long) are sampled
--samples times each, on vLLM where it is installed (k15.rollout.AutoEngine; --engine hf: Hugging
Face generate), in the model's chat template with --chat-template. The verifier judges each
sample: FinalAnswerMatch(--marker) by default, or --verifier, a YAML file or inline YAML holding
``{class_path, init_args}`` of any k15.reward.Verifier, or a k15 config or overlay whose
model.init_args.reward.init_args.verifier it takes (``--verifier conf/reward/math.yaml``).
The selection is k15/data/long2short.py's.

Writes OUT/train-%06d.tar.gz (the prompt record with ``solution`` = the shortest correct sample,
and ``origin_key``: the shards k15.data.sft.SFTDataModule reads) and, with --pairs-out,
PAIRS_OUT/train-%06d.tar.gz (the prompt record with ``chosen`` and ``rejected``: the shards
k15.data.preference.PreferenceDataModule reads). Without --out it only measures: with
--samples 1 --temperature 0 on held-out shards, ``accuracy`` and ``mean_tokens`` are the
model's greedy held-out accuracy and response length.

Prints one JSON line: prompts, samples, accuracy (correct samples / samples), mean_tokens (of
every sample), prompts_with_correct, sft_rows, pairs, mean_correct_tokens (of every correct
sample), mean_shortest_tokens (of the kept shortest), skipped (by reason), engine, wall_s.
Sample j of the run is seeded --seed + j, so the same inputs and engine give the same shards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser
from tqdm import tqdm

from k15.data.encode import encode_prompt
from k15.data.long2short import long2short_records
from k15.data.shards import read_records, shard_urls, write_shards
from k15.models import Pretrained
from k15.reward import FinalAnswerMatch, Verifier
from k15.rollout import AutoEngine, HFEngine, Request, Sampling

# prompts per engine call, a step of the progress bar; the samples do not depend on it
PROMPTS_PER_CALL = 256


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", required=True, help="a save_pretrained folder (model + tokenizer)")
    add("--shards", required=True, help="prompt shards: a brace pattern or a glob")
    add("--out", type=Path, help="folder for the SFT shards (none: only measure)")
    add("--pairs-out", type=Path, help="folder for the preference-pair shards")
    add("--prompts", type=int, help="sample the first N usable prompts (default: all)")
    add("--samples", type=int, default=8, help="samples per prompt (n)")
    add("--ratio", type=float, default=1.5, help="a correct sample this many times the shortest's length is rejected")
    add("--temperature", type=float, default=1.0, help="0: greedy")
    add("--top-p", type=float, default=1.0)
    add("--max-new-tokens", type=int, help="of a sample (default: what the model's context leaves after the prompt)")
    add("--seed", type=int, default=0, help="sample j of the run is seeded seed + j")
    add("--marker", default="A:", help="FinalAnswerMatch's answer marker (without --verifier)")
    add("--verifier", help="YAML file or inline YAML: {class_path, init_args}, or a k15 config/overlay")
    add("--chat-template", action="store_true", help="prompts in the model's chat template")
    add("--system-prompt", help="a system turn before every prompt (with --chat-template)")
    add("--engine", choices=("auto", "hf"), default="auto", help="auto: vLLM where installed, else HF")
    add("--dtype", default="float32", help="vLLM's weight dtype")
    add("--kv-cache-gib", type=float, default=0.5, help="vLLM's KV-cache size")
    add("--records-per-shard", type=int, default=5000)
    args = parser.parse_args()
    for flag in ("prompts", "samples", "max_new_tokens", "records_per_shard"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be ≥ 1, got {value}")
    if args.ratio < 1:
        parser.error(f"--ratio must be ≥ 1 (a correct sample shorter than the shortest cannot exist), got {args.ratio}")
    for folder in (args.out, args.pairs_out):
        if folder is not None and list(folder.glob("train-*.tar*")):
            parser.error(f"{folder} already holds shards: write into an empty folder")
    return args


def load_verifier(spec: str | None, marker: str) -> Verifier:
    """``FinalAnswerMatch(marker)``, or the verifier ``spec`` describes (see the module docstring)."""
    if spec is None:
        return FinalAnswerMatch(marker)
    config = yaml.safe_load(Path(spec).read_text() if Path(spec).is_file() else spec)
    if isinstance(config, dict) and "model" in config:  # a k15 config or overlay
        try:
            config = config["model"]["init_args"]["reward"]["init_args"]["verifier"]
        except (KeyError, TypeError):
            raise SystemExit(f"--verifier {spec}: no model.init_args.reward.init_args.verifier in it") from None
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--verifier", type=Verifier)
    try:
        return parser.instantiate(parser.parse_object({"verifier": config})).verifier
    except Exception as error:  # jsonargparse's ArgumentError, with what is wrong
        raise SystemExit(f"--verifier {spec}: {error}") from None


def usable_prompts(args, urls, tokenizer, chat, max_positions: int) -> tuple[list[dict], list[list[int]], Counter]:
    """The first ``--prompts`` usable records, their encoded prompts, and the skips by reason."""
    skipped, records, encoded = Counter(), [], []
    for record in read_records(urls, skipped, split_by_rank=False, check_images=False):
        if record["images"]:
            skipped["has_images"] += 1
            continue
        ids = encode_prompt(record["prompt"], [], tokenizer, None, chat).token_ids
        if len(ids) + (args.max_new_tokens or 1) > max_positions:
            skipped["too_long"] += 1
            continue
        records.append(record)
        encoded.append(ids)
        if len(records) == args.prompts:
            break
    if not records:
        raise SystemExit(f"no usable prompt in --shards {args.shards!r}; skipped: {dict(skipped)}")
    return records, encoded, skipped


def mean(values: list[int]) -> float | None:
    return round(statistics.fmean(values), 2) if values else None


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    verifier = load_verifier(args.verifier, args.marker)
    try:
        source = Pretrained(args.model, chat_template=args.chat_template, system_prompt=args.system_prompt)
        urls = shard_urls(args.shards)
    except (FileNotFoundError, ValueError) as error:  # no model or shards there; a chat setting it lacks
        raise SystemExit(f"long2short_samples.py: {error}") from None
    tokenizer = source.tokenizer()
    records, prompt_ids, skipped = usable_prompts(args, urls, tokenizer, source.prompt_format(), source.max_positions())
    context = source.max_positions()

    def room(ids: list[int]) -> int:  # a sample's token limit
        return args.max_new_tokens or context - len(ids)

    if args.engine == "hf":
        engine = HFEngine()
    else:
        longest = max(len(ids) + room(ids) for ids in prompt_ids)
        engine = AutoEngine(vllm={"dtype": args.dtype, "kv_cache_gib": args.kv_cache_gib, "max_model_len": longest})
    engine.sync(source.model())

    sft, pairs, lengths_all, correct_all, shortest = [], [], [], [], []
    seed = args.seed
    progress = tqdm(total=len(records), desc="sampling", unit="prompt", file=sys.stderr)  # stdout: the JSON line
    for start in range(0, len(records), PROMPTS_PER_CALL):
        chunk = range(start, min(start + PROMPTS_PER_CALL, len(records)))
        requests = [Request(prompt_ids[p], args.samples, room(prompt_ids[p])) for p in chunk]
        sampling = Sampling(temperature=args.temperature, top_p=args.top_p, seed=seed)
        groups = engine.sample(requests, sampling)
        seed += len(chunk) * args.samples
        # judged a call at a time: verifiers that batch (code tests, reward models) get many at once
        questions = [records[p]["prompt"] for p in chunk for _ in range(args.samples)]
        answers = [str(records[p]["answer"]) for p in chunk for _ in range(args.samples)]
        texts = tokenizer.batch_decode([c.token_ids for group in groups for c in group], skip_special_tokens=True)
        verdicts = [v.correct for v in verifier.judge_many(questions, texts, answers)]
        for i, (p, group) in enumerate(zip(chunk, groups, strict=True)):
            mine = slice(i * args.samples, (i + 1) * args.samples)
            lengths, correct = [len(c.token_ids) for c in group], verdicts[mine]
            made = long2short_records(records[p], texts[mine], lengths, correct, args.ratio)
            if made.sft is not None:
                sft.append(made.sft)
                shortest.append(min(length for length, ok in zip(lengths, correct, strict=True) if ok))
            pairs += made.pairs
            lengths_all += lengths
            correct_all += correct
        progress.update(len(chunk))
    progress.close()

    if args.out is not None:
        write_shards(sft, str(args.out / "train-%06d.tar.gz"), args.records_per_shard)
    if args.pairs_out is not None:
        write_shards(pairs, str(args.pairs_out / "train-%06d.tar.gz"), args.records_per_shard)
    correct_lengths = [length for length, ok in zip(lengths_all, correct_all, strict=True) if ok]
    report = {
        "prompts": len(records),
        "samples": len(lengths_all),
        "accuracy": round(sum(correct_all) / len(correct_all), 4),
        "mean_tokens": mean(lengths_all),
        "prompts_with_correct": len(sft),
        "sft_rows": len(sft) if args.out is not None else 0,
        "pairs": len(pairs) if args.pairs_out is not None else 0,
        "mean_correct_tokens": mean(correct_lengths),
        "mean_shortest_tokens": mean(shortest),
        "skipped": dict(sorted(skipped.items())),
        "engine": type(getattr(engine, "engine", engine)).__name__,  # AutoEngine's choice
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
