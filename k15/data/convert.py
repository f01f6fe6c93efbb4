"""Convert a prompt set in JSONL or Parquet into WebDataset shards, checking every row.

A row is a record (see ``k15/data/shards.py``) plus an optional ``images`` list whose items are
file paths (relative to ``image_root``), raw bytes, or ``{"bytes": ..., "path": ...}`` dicts as
Hugging Face datasets store them. Rows that would fail at training time are rejected here, with
a reason: ``undecodable_json`` (a JSONL line), ``missing_field``, ``empty_prompt``,
``missing_image`` (no such file), ``bad_image`` (PIL cannot decode it).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import webdataset as wds
from PIL import Image

from k15.data.shards import image_decodes, record_problem


def read_rows(path: Path) -> Iterator[dict | str]:
    """Rows of a ``.jsonl`` or ``.parquet`` file; a JSONL line that does not parse yields its reason."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
        return
    with path.open("rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                yield json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                yield "undecodable_json"


def image_bytes(item, image_root: Path) -> bytes | str:
    if isinstance(item, dict):
        item = item.get("bytes") or item.get("path")
    if isinstance(item, bytes):
        return item
    file = image_root / str(item)
    return file.read_bytes() if file.is_file() else "missing_image"


def to_sample(row: dict, key: str, image_root: Path) -> dict | str:
    """The WebDataset sample for ``row``, or why it is rejected."""
    record = {k: v for k, v in row.items() if k != "images" and v is not None}
    problem = record_problem(record)
    if problem:
        return problem
    sample = {"__key__": key, "json": record}
    for j, item in enumerate(row.get("images") or []):
        data = image_bytes(item, image_root)
        if isinstance(data, str):
            return data
        if not image_decodes(data):
            return "bad_image"
        with Image.open(io.BytesIO(data)) as image:
            extension = {"PNG": "png", "JPEG": "jpg"}.get(image.format)
            if extension is None:  # another format: store it as PNG
                png = io.BytesIO()
                image.save(png, format="PNG")
                data, extension = png.getvalue(), "png"
        sample[f"{j:02d}.{extension}"] = data
    return sample


def convert(source: Path, pattern: str, image_root: Path | None = None, records_per_shard: int = 5000) -> dict:
    """Write the good rows of ``source`` to shards named by ``pattern``; return the report."""
    image_root = image_root or source.parent
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    rejected, difficulty, read, written = Counter(), Counter(), 0, 0
    with wds.ShardWriter(pattern, maxcount=records_per_shard, verbose=0) as sink:
        for read, row in enumerate(read_rows(source), start=1):
            sample = row if isinstance(row, str) else to_sample(row, f"{read - 1:08d}", image_root)
            if isinstance(sample, str):
                rejected[sample] += 1
                continue
            sink.write(sample)
            written += 1
            difficulty[sample["json"]["difficulty"]] += 1
    return {
        "read": read,
        "written": written,
        "rejected": dict(rejected),
        "difficulty": dict(sorted(difficulty.items())),
    }
