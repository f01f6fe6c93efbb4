"""The RL data path's speed: shard streaming into the prompt pool, and drawing an iteration's batch.

    python tools/bench/data.py [--records 20000 --prompts 16 --draws 200]

Text: the shipped ``shards/addition`` training shards. Images: ``--records`` records written to a
temp dir with one 64×64 PNG each (a PIL drawing), read the same way (every image decoded once to
check it). ``draw`` = one iteration's ``CurriculumDataModule.draw`` with prioritized sampling
(stage filter, weights, sampling, tokenization), over the text pool and over ``shards/vision``
with the tiny VLM's processor (images decoded, resized, normalised to pixel_values, image tokens
expanded). Their shares of an iteration are against ``--iteration-s`` and ``--vlm-iteration-s``
(the medians of ``perf/iteration_seconds`` in ``conf/tiny.yaml`` and ``conf/tiny_vlm.yaml``).

Prints one JSON line: ``text_samples_per_s``, ``image_samples_per_s`` (pool loading),
``draw_ms``, ``share_of_iteration``, ``image_draw_ms``, ``image_share_of_iteration``.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
import time
from pathlib import Path

import lightning
import torch
import webdataset as wds
from PIL import Image, ImageDraw

from k15.data.arithmetic import ALPHABET
from k15.data.curriculum import CurriculumDataModule
from k15.data.pool import load_pool
from k15.data.shards import shard_urls
from k15.models import TinyVLM
from k15.models.tiny import char_tokenizer

SHARDS = Path(__file__).resolve().parents[2] / "shards" / "addition"
VISION = SHARDS.parent / "vision"
VLM_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzAHMS?.:+=, "  # conf/tiny_vlm_sft.yaml's


def image_shards(folder: Path, count: int) -> list[str]:
    rng = random.Random(0)
    with wds.ShardWriter(str(folder / "img-%06d.tar"), maxcount=5000, verbose=0) as sink:
        for i in range(count):
            image = Image.new("RGB", (64, 64), "white")
            draw = ImageDraw.Draw(image)
            for _ in range(rng.randint(1, 5)):
                x, y = rng.randint(0, 48), rng.randint(0, 48)
                draw.ellipse((x, y, x + 14, y + 14), fill="black")
            png = io.BytesIO()
            image.save(png, format="PNG")
            sink.write(
                {
                    "__key__": f"{i:08d}",
                    "json": {"prompt": "How many dots?", "answer": "1", "difficulty": 1},
                    "png": png.getvalue(),
                }
            )
    return sorted(str(p) for p in folder.glob("img-*.tar"))


def samples_per_s(urls: list[str]) -> float:
    start = time.perf_counter()
    pool = load_pool(urls)
    return len(pool) / (time.perf_counter() - start)


def draw_seconds(shards: Path, prompts: int, draws: int, tokenizer, processor=None) -> tuple[float, int]:
    """Mean seconds of one draw (with the success update it feeds), and the pool's size."""
    dm = CurriculumDataModule(
        str(shards / "train-*.tar.gz"), str(shards / "heldout-*.tar.gz"), prompts_per_iteration=prompts
    )
    dm.trainer = lightning.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    dm.tokenizer, dm.processor = tokenizer, processor
    dm.setup("fit")
    dm.draw()  # warm-up
    start = time.perf_counter()
    for _ in range(draws):
        batch = dm.draw()
        dm.record(batch.keys, torch.rand(len(batch), 8) > 0.5)
    return (time.perf_counter() - start) / draws, len(dm.pool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000, help="image records to write and read")
    parser.add_argument("--prompts", type=int, default=16, help="P, prompts per draw")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--iteration-s", type=float, default=1.10, help="an RL iteration of the tiny recipe, seconds")
    parser.add_argument(
        "--vlm-iteration-s", type=float, default=1.12, help="an RL iteration of the tiny VLM recipe, seconds"
    )
    args = parser.parse_args()

    text_urls = shard_urls(str(SHARDS / "train-*.tar.gz"))
    text = samples_per_s(text_urls)
    with tempfile.TemporaryDirectory() as tmp:
        image = samples_per_s(image_shards(Path(tmp), args.records))

    draw_s, pool_prompts = draw_seconds(SHARDS, args.prompts, args.draws, char_tokenizer(ALPHABET))
    vlm = TinyVLM(VLM_ALPHABET)
    image_draw_s, _ = draw_seconds(VISION, args.prompts, args.draws, vlm.tokenizer(), vlm.processor())
    print(
        json.dumps(
            {
                "text_samples_per_s": round(text),
                "image_samples_per_s": round(image),
                "draw_ms": round(draw_s * 1000, 2),
                "share_of_iteration": round(draw_s / args.iteration_s, 4),
                "image_draw_ms": round(image_draw_s * 1000, 2),
                "image_share_of_iteration": round(image_draw_s / args.vlm_iteration_s, 4),
                "pool_prompts": pool_prompts,
                "prompts_per_draw": args.prompts,
            }
        )
    )


if __name__ == "__main__":
    main()
