"""Write the tiny arithmetic task's WebDataset shards (train and held-out) under shards/, or
convert a prompt set in JSONL, JSON or Parquet to shards, checking every row (k15/data/convert.py).

    python tools/make_shards.py --out shards/addition --train 20000 --heldout 400
    python tools/make_shards.py --style mix --out shards/addition_long --train 20000 --heldout 400
    python tools/make_shards.py --task vision --out shards/vision --train 3000 --heldout 300
    python tools/make_shards.py --from prompts.jsonl --out shards/mine [--image-root DIR]
    python tools/make_shards.py --from dapo-math-17k.parquet --layout dapo --out shards/dapo_math
    python tools/make_shards.py --from deepscaler.json --layout problem-answer --out shards/deepscaler
    python tools/make_shards.py --from math.parquet --layout problem-answer --difficulty-key level --out shards/math

--from reads JSONL, a JSON array, or Parquet; --layout says where a row keeps the prompt, answer,
difficulty and solution (k15: k15's own record format; dapo: verl's chat-message prompt and
reward_model.ground_truth; problem-answer: DeepScaleR's and OpenR1-Math's columns), and the key
flags override it (dotted keys reach into nested columns). The last line printed is the report:
rows read, written, rejected by reason, the layout used (k15/data/convert.py says what is kept).

Difficulty (digits per operand) is drawn uniformly from 1..MAX_DIFFICULTY; the held-out set
uses a different seed and excludes every training prompt. Each record's ``solution`` is the
imperfect teacher's trace (see k15/data/arithmetic.py); ``teacher`` says which solver wrote it.
--style writes the traces plain, verbose (long-CoT: every column re-checked, the sum restated), or
a mix of the two for a long model that long2short can shorten; ``style`` says which each one is.
The style changes only the traces: the same seed writes the same prompts and slips in any style.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

import webdataset as wds

from k15.data.arithmetic import MAX_DIFFICULTY, STYLES, sample_problem, teacher_solution, teacher_writes_verbose
from k15.data.convert import LAYOUTS, choose_layout, convert
from k15.data.shards import write_shards
from k15.data.vision import TASKS
from k15.errors import K15Error


def vision_samples(count: int, seed: int, exclude: set[tuple[str, bytes]]) -> list[dict]:
    """``count`` distinct image + question samples of the synthetic vision tasks
    (k15/data/vision.py), difficulty 1–5, none of them in ``exclude`` (prompt, PNG bytes).

    Easy scenes repeat often (one circle has 16 places to be), so repeats are skipped: a
    held-out image must not be a training image.
    """
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < count:
        task = rng.choice(sorted(TASKS))
        problem = TASKS[task](rng, rng.randint(1, MAX_DIFFICULTY))
        png = io.BytesIO()
        problem.image.save(png, format="PNG")
        if (problem.prompt, png.getvalue()) in seen:
            continue
        seen.add((problem.prompt, png.getvalue()))
        record = {
            "prompt": problem.prompt,
            "answer": problem.answer,
            "difficulty": problem.difficulty,
            "solution": f"A:{problem.answer}",
            "task": task,
            "domain": "vision",
            "source": f"k15.synthetic.{task}",
        }
        out.append({"__key__": f"{len(out):08d}", "json": record, "png": png.getvalue()})
    return out


def write_samples(samples: list[dict], pattern: str, per_shard: int) -> int:
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(pattern, maxcount=per_shard, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)
    return len(samples)


def records(
    count: int, seed: int, exclude: set[str], max_difficulty: int = MAX_DIFFICULTY, style: str = "plain"
) -> list[dict]:
    # the style is drawn from a stream of its own, so problems and slips do not depend on it
    rng, style_rng, out, seen = random.Random(seed), random.Random(f"style-{seed}"), [], set(exclude)
    while len(out) < count:
        problem = sample_problem(rng, rng.randint(1, max_difficulty))
        if problem.prompt in seen:
            continue
        seen.add(problem.prompt)
        verbose = teacher_writes_verbose(style, style_rng)
        solution, sloppy = teacher_solution(problem, rng, verbose)
        out.append(
            {
                "prompt": problem.prompt,
                "answer": problem.answer,
                "difficulty": problem.difficulty,
                "solution": solution,
                "teacher": "sloppy" if sloppy else "correct",
                "style": "verbose" if verbose else "plain",
                "domain": "arithmetic",
                "source": "k15.synthetic.addition",
            }
        )
    return out


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A bad flag fails in one line that names it (argparse's default prints the usage first)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def main() -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="shards/addition")
    parser.add_argument("--train", type=int, default=20000, help="training records")
    parser.add_argument("--heldout", type=int, default=400, help="held-out records")
    parser.add_argument("--records-per-shard", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=("addition", "vision"), default="addition")
    parser.add_argument(
        "--max-difficulty", type=int, default=MAX_DIFFICULTY, choices=range(1, MAX_DIFFICULTY + 1),
        help="addition: operands of at most this many digits (an easier task learns in fewer steps)",
    )  # fmt: skip
    parser.add_argument(
        "--style", choices=STYLES, default="plain",
        help="addition: plain traces, verbose (long-CoT) ones, or a mix (k15/data/arithmetic.py's VERBOSE_FRACTION)",
    )  # fmt: skip
    parser.add_argument("--from", dest="source", type=Path, help="convert this .jsonl, .json or .parquet file instead")
    parser.add_argument("--image-root", type=Path, help="where relative image paths point (default: the file's folder)")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="k15", help="--from: where a row keeps each field")
    parser.add_argument("--prompt-key", help="--from: the prompt's key (a string, or chat messages)")
    parser.add_argument("--answer-key", help="--from: the answer's key; dotted: reward_model.ground_truth")
    parser.add_argument("--difficulty-key", help="--from: the difficulty's key (an int, or text like 'Level 3')")
    parser.add_argument("--default-difficulty", type=int, help="--from: the difficulty of a row without one")
    parser.add_argument("--solution-key", help="--from: the key of a worked solution (what SFT imitates)")
    args = parser.parse_args()
    if args.style != "plain" and (args.source or args.task != "addition"):
        parser.error("--style: only the addition task has trace styles")
    if args.source:
        if not args.source.is_file():
            raise SystemExit(f"make_shards: --from {args.source}: no such file")
        keys = ("prompt_key", "answer_key", "difficulty_key", "default_difficulty", "solution_key")
        layout = choose_layout(args.layout, **{key: getattr(args, key) for key in keys})
        try:
            report = convert(args.source, f"{args.out}/train-%06d.tar", args.image_root, args.records_per_shard, layout)
        except K15Error as error:
            raise SystemExit(f"make_shards: {error}") from None
        print(json.dumps(report))
        if not report["written"]:
            raise SystemExit(f"no usable rows in {args.source}: {report['rejected']}")
        return
    if args.task == "vision":
        heldout = vision_samples(args.heldout, args.seed + 1, exclude=set())
        train = vision_samples(args.train, args.seed, exclude={(s["json"]["prompt"], s["png"]) for s in heldout})
        n_train = write_samples(train, f"{args.out}/train-%06d.tar.gz", args.records_per_shard)
        n_heldout = write_samples(heldout, f"{args.out}/heldout-%06d.tar.gz", args.records_per_shard)
        print(f"wrote {n_train} train and {n_heldout} held-out image records to {args.out}/")
        return
    hardest = args.max_difficulty
    heldout = records(args.heldout, seed=args.seed + 1, exclude=set(), max_difficulty=hardest, style=args.style)
    train = records(
        args.train, seed=args.seed, exclude={r["prompt"] for r in heldout}, max_difficulty=hardest, style=args.style
    )
    n_train = write_shards(train, f"{args.out}/train-%06d.tar.gz", records_per_shard=args.records_per_shard)
    n_heldout = write_shards(heldout, f"{args.out}/heldout-%06d.tar.gz")
    print(f"wrote {n_train} train and {n_heldout} held-out records to {args.out}/")


if __name__ == "__main__":
    main()
