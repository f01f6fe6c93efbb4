"""Near-duplicate detection of the curation tool: its time, peak memory and accuracy against input size.

    python tools/bench/curate.py [--sizes 20000 100000 --copies 0.1 --images 200 --seed 0]

Text: ``--sizes`` synthetic prompts (word problems of 15–60 random words, and "Q:a+b=" sums), a
``--copies`` share of them planted copies of an earlier prompt with 0–4 random character edits
(some shouted and padded with spaces), each with its own answer so that none is an exact
duplicate. ``find_duplicates`` (datasketch's MinHash and MinHashLSH) runs on them twice: once
timed, once under tracemalloc for its peak Python heap (numpy's arrays included). A planted copy
is a true near duplicate when the exact Jaccard similarity of its 5-gram set to its source's is
≥ 0.9; recall and precision are the found near duplicates' against those, and recall is also
given for J ≥ 0.95 alone (a pair just over the threshold is missed about half the time: the
MinHash estimate's standard deviation there is 0.027).

Images: ``--images`` PIL drawings (shapes and digits on a plain ground) and as many photo-like
images (a smooth random field with grain); ``average_hash`` (imagehash's) of each, of resized and
JPEG copies (which should collide) and across the distinct images (which should not).

Prints one JSON line: ``text`` (per size: ``seconds``, ``us_per_prompt``, ``peak_mb``,
``recall``, ``recall_j_ge_0_95``, ``precision``), ``image`` (``ms_per_image``,
``copies_colliding`` per kind of copy, ``distinct_pairs_colliding``).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import random
import string
import time
import tracemalloc

import numpy as np
from PIL import Image, ImageDraw

from k15.data.curate import average_hash, find_duplicates, normalise, shingles

THRESHOLD = 0.9


def synthetic_prompts(n: int, copies: float, seed: int) -> tuple[list[str], list[str], dict[int, int]]:
    """(prompts, answers, {planted copy: the index of its source})."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    words = ["".join(rng.choices(letters, k=rng.randint(3, 9))) for _ in range(5000)]
    prompts, sources, planted = [], [], {}
    for i in range(n):
        if sources and rng.random() < copies:
            source = rng.choice(sources)
            text = list(prompts[source])
            for _ in range(rng.randint(0, 4)):
                at, edit = rng.randrange(len(text)), rng.random()
                if edit < 0.5:
                    text[at] = rng.choice(letters)
                elif edit < 0.75:
                    text.insert(at, rng.choice(letters))
                elif len(text) > 1:
                    del text[at]
            prompt = "".join(text)
            prompts.append(f"  {prompt.upper()}\n" if rng.random() < 0.3 else prompt)
            planted[i] = source
        else:
            if rng.random() < 0.3:
                prompts.append(f"Q:{rng.randint(0, 99999)}+{rng.randint(0, 99999)}=")
            else:
                body = " ".join(rng.choices(words, k=rng.randint(15, 60)))
                prompts.append(f"Q: {body}, how many {rng.choice(words)} are there in {rng.randint(2, 99)} days?")
            sources.append(i)
    return prompts, [str(i) for i in range(n)], planted


def jaccard(a: str, b: str) -> float:
    x, y = shingles(normalise(a), 5), shingles(normalise(b), 5)
    return len(x & y) / len(x | y)


def bench_text(n: int, copies: float, seed: int) -> dict:
    prompts, answers, planted = synthetic_prompts(n, copies, seed)
    images = [[] for _ in prompts]
    similarity = {i: jaccard(prompts[i], prompts[source]) for i, source in planted.items()}
    true = {i for i, j in similarity.items() if j >= THRESHOLD}
    very = {i for i, j in similarity.items() if j >= 0.95}
    start = time.perf_counter()
    duplicates = find_duplicates(prompts, answers, images, THRESHOLD)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    find_duplicates(prompts, answers, images, THRESHOLD)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    found = {i for i, (reason, _) in duplicates.items() if reason == "near_duplicate"}
    return {
        "prompts": n,
        "seconds": round(seconds, 2),
        "us_per_prompt": round(seconds / n * 1e6, 1),
        "peak_mb": round(peak / 2**20, 1),
        "planted": len(planted),
        "true_near": len(true),
        "found_near": len(found),
        "recall": round(len(found & true) / len(true), 4),
        "recall_j_ge_0_95": round(len(found & very) / len(very), 4),
        "precision": round(len(found & true) / max(len(found), 1), 4),
    }


def drawing(rng: random.Random) -> Image.Image:
    side = rng.choice([64, 96, 128, 224])
    image = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 8)):
        x, y = rng.randrange(side), rng.randrange(side)
        box = (x, y, x + rng.randint(4, side // 2), y + rng.randint(4, side // 2))
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice(("ellipse", "rectangle", "text"))
        if shape == "text":
            draw.text(box[:2], str(rng.randint(0, 999)), fill=colour)
        else:
            getattr(draw, shape)(box, fill=colour)
    return image


def photo(rng: random.Random) -> Image.Image:
    side = rng.choice([96, 160, 256])
    generator = np.random.default_rng(rng.randrange(2**32))
    field = Image.fromarray(generator.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(
        (side, side), Image.Resampling.BICUBIC
    )
    grain = generator.normal(0, 8, (side, side, 3))
    return Image.fromarray(np.clip(np.asarray(field, float) + grain, 0, 255).astype(np.uint8))


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def bench_images(count: int, seed: int) -> dict:
    rng = random.Random(seed)
    originals = [drawing(rng) for _ in range(count)] + [photo(rng) for _ in range(count)]
    data = [encoded(image) for image in originals]
    start = time.perf_counter()
    hashes = [average_hash(blob) for blob in data]
    ms = (time.perf_counter() - start) / len(data) * 1e3
    copies = {
        "resized_0.75": lambda im: encoded(
            im.resize((im.width * 3 // 4, im.height * 3 // 4), Image.Resampling.BICUBIC)
        ),
        "resized_1.5": lambda im: encoded(im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.Resampling.BICUBIC)),
        "jpeg_q85": lambda im: encoded(im, "JPEG", quality=85),
        "jpeg_q50": lambda im: encoded(im, "JPEG", quality=50),
    }
    colliding = {
        kind: round(sum(average_hash(copy(im)) == h for im, h in zip(originals, hashes, strict=True)) / len(data), 4)
        for kind, copy in copies.items()
    }
    distinct = sum(a == b for a, b in itertools.combinations(hashes, 2))
    return {
        "images": len(data),
        "ms_per_image": round(ms, 3),
        "copies_colliding": colliding,
        "distinct_pairs_colliding": distinct,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000], help="prompts per run")
    parser.add_argument("--copies", type=float, default=0.1, help="share of planted near copies")
    parser.add_argument("--images", type=int, default=200, help="drawings, and as many photo-like images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    text = [bench_text(n, args.copies, args.seed) for n in args.sizes]
    print(json.dumps({"text": text, "image": bench_images(args.images, args.seed)}))


if __name__ == "__main__":
    main()
