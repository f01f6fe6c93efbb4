"""Curate an RL prompt set as k1.5 §2.1 does, from shards to shards plus a JSON report.

    python tools/curate.py --shards 'shards/addition/train-{000000..000009}.tar.gz' \\
        --model runs/tiny_sft/hf --out shards/addition_curated

In order (the math is in k15/data/curate.py):

  1. duplicates    exact (normalised prompt + answer + image bytes) and near (MinHash/LSH
                   over character n-grams ≥ --near-threshold; with images only if
                   --image-near-duplicates: same text, answer and 8×8 average hash, off
                   by default as it merges distinct synthetic images); the first stays
  2. evaluability  multiple choice, true/false and proof questions go (--keep-kinds keeps
                   some). An unlisted choice such as the vision "compare" task (circle,
                   square or same) passes these rules; --max-choices 3 drops it (a prompt
                   text asked > K times whose answers take ≤ K values), off by default
  3. easy to hack  the prompt + --no-cot-suffix (default "A:", the answer marker, so the
                   model must answer at once), --hack-tries 8 samples at temperature 1.0,
                   each read as suffix + completion by FinalAnswerMatch: dropped if any is right
  4. difficulty    --pass-samples 10 chain-of-thought samples at --temperature: pass rate
                   p = correct / 10, difficulty = 5 − round(4p); the old label is kept as
                   difficulty_label_original, p as pass_rate (--drop-solved / --drop-unsolved)

Steps 3–4 ask the model. A vision-language model (a folder with a processor, e.g. the tiny
VLM's export) checks image prompts too, with HFEngine (vLLM cannot serve one here); a
text-only model cannot see images, so then records with images skip steps 3–4, keep their
label, get pass_rate null and are counted as not_model_checked.

Writes OUT/train-%06d.tar.gz (the input schema, images under their member names, plus
origin_key = the input record's pool key) and OUT/report.json (counts in, kept, dropped
per reason, difficulty histograms before/after, pass-rate histogram, seconds per step, and
every dropped record with its reason); prints the report as one JSON line with the
per-record list cut to its first 20 (the sampling passes' progress bars go to stderr).
The same inputs, --seed and engine give the same output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from k15.data.curate import (
    UNEVALUABLE_KINDS,
    closed_set_prompts,
    difficulty_from_pass_rate,
    find_duplicates,
    normalise,
    unevaluable_kind,
)
from k15.data.encode import encode_prompt
from k15.data.pool import load_pool
from k15.data.shards import pool_key, shard_urls
from k15.models import Pretrained
from k15.reward import FinalAnswerMatch
from k15.rollout import AutoEngine, HFEngine, Request, Sampling

REASONS = ("exact_duplicate", "near_duplicate", *UNEVALUABLE_KINDS, "closed_set")
REASONS += ("easy_to_hack", "solved", "unsolved")
# prompts per engine call, a step of the progress bar; the samples do not depend on it
PROMPTS_PER_CALL = 1024
SHOWN_DROPPED = 20


def parse_args() -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    add = parser.add_argument
    add("--shards", required=True, help="input shards: a brace pattern or a glob")
    add("--model", required=True, help="a save_pretrained folder (model + tokenizer)")
    add("--out", required=True, type=Path, help="folder for the shards + report.json")
    add("--limit", type=int, help="curate only the first N readable records")
    add("--seed", type=int, default=0, help="sample j of the run is seeded seed + j")
    add("--near-threshold", type=float, default=0.9, help="estimated Jaccard")
    add("--shingle-chars", type=int, default=5, help="n of the character n-grams")
    add("--image-near-duplicates", action="store_true", help="compare average hashes")
    add("--keep-kinds", nargs="*", default=[], choices=UNEVALUABLE_KINDS)
    add("--max-choices", type=int, default=0, help="closed_set rule's K (0: off)")
    add("--marker", default="A:", help="FinalAnswerMatch's answer marker")
    add("--no-cot-suffix", default="A:", help="ends a prompt to ask for the answer")
    add("--hack-tries", type=int, default=8, help="no-CoT samples per prompt (N)")
    add("--hack-temperature", type=float, default=1.0)
    add("--no-cot-max-new-tokens", type=int, default=16)
    add("--pass-samples", type=int, default=10, help="CoT samples per prompt")
    add("--temperature", type=float, default=1.0, help="of the CoT samples")
    add("--max-new-tokens", type=int, default=64, help="of a CoT sample")
    add("--drop-solved", action="store_true", help="drop prompts with pass rate 1")
    add("--drop-unsolved", action="store_true", help="drop prompts with pass rate 0")
    add("--engine", choices=("auto", "hf"), default="auto", help="auto: vLLM or HF")
    add("--dtype", default="float32", help="vLLM's weight dtype")
    add("--kv-cache-gib", type=float, default=0.5, help="vLLM's KV-cache size")
    add("--records-per-shard", type=int, default=2000)
    return parser.parse_args()


def raw_members(urls: list[str], keys: set[str]) -> dict[str, dict[str, bytes]]:
    """Every member (json, images, …) of the samples in ``keys``, by their pool key.

    ``load_pool`` checks the records but keeps only what training needs; writing them
    back needs the rest (solution, domain, image member names): a second read.
    """
    samples = wds.WebDataset(
        urls,
        shardshuffle=False,
        nodesplitter=lambda u: u,
        workersplitter=lambda u: u,
        handler=wds.ignore_and_continue,  # load_pool has counted the bad ones
        empty_check=False,
    )
    members = {}
    for sample in samples:
        key = pool_key(sample)
        if key in keys:
            members[key] = {k: v for k, v in sample.items() if not k.startswith("__")}
    return members


def rule_filters(args, keys, prompts, answers, images) -> dict[int, dict]:
    """Steps 1–2: {record index: {"reason": …, "duplicate_of": key}} of the dropped."""
    near = {"threshold": args.near_threshold, "shingle_chars": args.shingle_chars}
    duplicates = find_duplicates(prompts, answers, images, **near, image_near=args.image_near_duplicates)
    dropped = {i: {"reason": r, "duplicate_of": keys[j]} for i, (r, j) in duplicates.items()}
    alive = [i for i in range(len(prompts)) if i not in dropped]
    kinds = tuple(k for k in UNEVALUABLE_KINDS if k not in args.keep_kinds)
    closed = closed_set_prompts([prompts[i] for i in alive], [answers[i] for i in alive], args.max_choices)
    for i in alive:
        in_closed = normalise(prompts[i]) in closed
        kind = unevaluable_kind(prompts[i], answers[i], kinds)
        if kind or in_closed:
            dropped[i] = {"reason": kind or "closed_set"}
    return dropped


class Judge:
    """Samples a pass over prompts and counts the completions the verifier accepts.

    Sample j of all the passes is seeded ``seed + j``, whatever the chunking.
    """

    def __init__(self, engine, tokenizer, processor, marker: str, seed: int):
        self.engine, self.tokenizer, self.processor = engine, tokenizer, processor
        self.verifier, self.seed = FinalAnswerMatch(marker), seed

    def correct(self, desc, prompts, answers, images, samples, max_new_tokens, temperature, suffix=""):
        """[P] correct completions of prompt + ``suffix``, each read as suffix + completion
        (so the marker a no-CoT prompt ends with is seen by the verifier); ``desc`` names the
        pass on the progress bar (stderr: stdout is the report)."""
        counts, progress = [], tqdm(total=len(prompts), desc=desc, unit="prompt", file=sys.stderr)
        for start in range(0, len(prompts), PROMPTS_PER_CALL):
            chunk = range(start, min(start + PROMPTS_PER_CALL, len(prompts)))
            encoded = [encode_prompt(prompts[p] + suffix, images[p], self.tokenizer, self.processor) for p in chunk]
            requests = [Request(e.token_ids, samples, max_new_tokens, e.images, e.model_inputs) for e in encoded]
            sampling = Sampling(temperature=temperature, seed=self.seed)
            groups = self.engine.sample(requests, sampling)
            self.seed += len(chunk) * samples
            for p, group in zip(chunk, groups, strict=True):
                texts = self.tokenizer.batch_decode([c.token_ids for c in group], skip_special_tokens=True)
                counts.append(sum(self.verifier(suffix + t, answers[p]) for t in texts))
            progress.update(len(chunk))
        progress.close()
        return counts


def model_filters(args, source, prompts, answers, images) -> tuple[dict[int, dict], dict[int, int], dict]:
    """Steps 3–4 on the prompts the model can read: (dropped {index: details}, correct CoT
    samples of each prompt that reached step 4, {"engine": name, "seconds": per pass})."""
    tokenizer, processor = source.tokenizer(), source.processor()
    if args.engine == "hf" or processor is not None:
        engine = HFEngine()
    else:
        longest = max(len(tokenizer(p + args.no_cot_suffix)["input_ids"]) for p in prompts)
        new_tokens = max(args.max_new_tokens, args.no_cot_max_new_tokens)
        vllm = {"dtype": args.dtype, "kv_cache_gib": args.kv_cache_gib}
        engine = AutoEngine(vllm=vllm | {"max_model_len": longest + new_tokens})
    engine.sync(source.model())
    judge = Judge(engine, tokenizer, processor, args.marker, args.seed)
    started = time.perf_counter()
    hack = (args.hack_tries, args.no_cot_max_new_tokens, args.hack_temperature)
    hacked = judge.correct("easy to hack: no-CoT samples", prompts, answers, images, *hack, suffix=args.no_cot_suffix)
    dropped = {p: {"reason": "easy_to_hack", "correct_tries": c} for p, c in enumerate(hacked) if c}
    left = [p for p in range(len(prompts)) if p not in dropped]
    hacked_at = time.perf_counter()
    cot = (args.pass_samples, args.max_new_tokens, args.temperature)
    columns = ([column[p] for p in left] for column in (prompts, answers, images))
    passed = judge.correct("pass rate: CoT samples", *columns, *cot)
    seconds = {
        "easy_to_hack": hacked_at - started,
        "pass_rate": time.perf_counter() - hacked_at,
    }
    correct = dict(zip(left, passed, strict=True))
    solved, unsolved = args.drop_solved, args.drop_unsolved
    for p, c in correct.items():
        if (solved and c == args.pass_samples) or (unsolved and c == 0):
            dropped[p] = {"reason": "solved" if c else "unsolved"}
    name = type(getattr(engine, "engine", engine)).__name__  # AutoEngine's choice
    return dropped, correct, {"engine": name, "seconds": seconds}


def write_curated(args, records) -> list[int]:
    """Write ``records`` [(pool key, members, correct CoT samples or None)] as shards with
    difficulty and pass_rate from the samples where they were drawn; → difficulties."""
    args.out.mkdir(parents=True, exist_ok=True)
    pattern, difficulties = str(args.out / "train-%06d.tar.gz"), []
    with wds.ShardWriter(pattern, maxcount=args.records_per_shard, verbose=0) as sink:
        for written, (key, members, correct) in enumerate(records):
            sample = dict(members)
            record = json.loads(sample.pop("json")) | {
                "origin_key": key,
                "pass_rate": None,
            }
            if correct is not None:
                record["difficulty_label_original"] = record["difficulty"]
                record["difficulty"] = difficulty_from_pass_rate(correct, args.pass_samples)
                record["pass_rate"] = correct / args.pass_samples
            difficulties.append(record["difficulty"])
            sink.write({"__key__": f"{written:08d}", "json": record, **sample})
    return difficulties


def histogram(values) -> dict:
    return dict(sorted(Counter(values).items()))


def main() -> None:
    args = parse_args()
    if list(args.out.glob("train-*.tar*")):
        raise SystemExit(f"{args.out} already holds shards: curate into an empty folder")
    seconds, started = {}, time.perf_counter()

    def lap(step: str) -> None:  # seconds since the previous lap
        seconds[step] = round(time.perf_counter() - started - sum(seconds.values()), 2)

    urls = shard_urls(args.shards)
    pool = load_pool(urls)
    n = len(pool) if args.limit is None else min(args.limit, len(pool))
    keys, prompts, answers = pool.keys[:n], pool.prompts[:n], pool.answers[:n]
    images = pool.images[:n]
    members = raw_members(urls, set(keys))
    lap("read")
    dropped = rule_filters(args, keys, prompts, answers, images)
    lap("rules")
    source = Pretrained(args.model)
    sees_images = source.processor() is not None
    text = [i for i in range(n) if i not in dropped and (sees_images or not images[i])]
    correct, model = {}, {"engine": None, "seconds": {}}
    if text:
        by_model, passes, model = model_filters(
            args, source, *([column[i] for i in text] for column in (prompts, answers, images))
        )
        dropped |= {text[p]: details for p, details in by_model.items()}
        correct = {text[p]: c for p, c in passes.items()}
    lap("model")  # engine start-up, the two sampling passes (in model_seconds), scoring
    kept = [i for i in range(n) if i not in dropped]
    difficulties = write_curated(args, [(keys[i], members[keys[i]], correct.get(i)) for i in kept])
    lap("write")

    reasons = Counter(details["reason"] for details in dropped.values())
    report = {
        "in": n,
        "kept": len(kept),
        "dropped": {reason: reasons[reason] for reason in REASONS},
        "unreadable": dict(pool.skipped),
        "model_checked": len(text),
        # kept records with images a text-only model cannot see (steps 3-4 skipped)
        "not_model_checked": sum(1 for i in kept if images[i] and not sees_images),
        "engine": model["engine"],
        "difficulty_before": histogram(pool.difficulties[:n]),
        "difficulty_after": histogram(difficulties),
        "pass_rate": histogram(c / args.pass_samples for c in correct.values()),
        "seconds": seconds,
        "model_seconds": {k: round(v, 2) for k, v in model["seconds"].items()},
        "wall_s": round(time.perf_counter() - started, 1),
        "settings": vars(args),
        "dropped_records": [{"key": keys[i], **dropped[i]} for i in sorted(dropped)],
    }
    path = args.out / "report.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    shown = report["dropped_records"][:SHOWN_DROPPED]
    print(json.dumps(report | {"dropped_records": shown, "report": path}, default=str))


if __name__ == "__main__":
    main()
