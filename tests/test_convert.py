"""tools/make_shards.py --from: JSONL and Parquet prompt sets to shards, every row checked."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from k15.data.pool import load_pool
from k15.data.shards import shard_urls

ROOT = Path(__file__).resolve().parents[1]


def image(format: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(out, format=format)
    return out.getvalue()


def rows(folder) -> list[dict]:
    (folder / "dots.png").write_bytes(image("PNG"))
    (folder / "broken.png").write_bytes(b"not an image")
    ok = {"answer": "2", "difficulty": 1, "domain": "vision"}
    return [
        {"prompt": "Q:1+1=", **ok},
        {"prompt": "How many dots?", **ok, "images": ["dots.png"]},
        {
            "prompt": "Two images",
            **ok,
            "images": [{"bytes": image("JPEG"), "path": None}, {"bytes": image("GIF"), "path": None}],
        },
        {"prompt": "Q:2+2=", "answer": "4"},  # no difficulty
        {"prompt": " ", **ok},
        {"prompt": "Where?", **ok, "images": ["gone.png"]},
        {"prompt": "Broken", **ok, "images": ["broken.png"]},
    ]


def make_shards(*args):
    result = subprocess.run(
        [sys.executable, "tools/make_shards.py", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return result, json.loads(result.stdout.splitlines()[-1]) if result.returncode == 0 else None


def check(report, out):
    assert report["written"] == 3
    assert report["rejected"] == {"missing_field": 1, "empty_prompt": 1, "missing_image": 1, "bad_image": 1}
    pool = load_pool(shard_urls(f"{out}/train-*.tar"))
    assert pool.prompts == ["Q:1+1=", "How many dots?", "Two images"] and not pool.skipped
    assert [len(i) for i in pool.images] == [0, 1, 2]
    assert [Image.open(io.BytesIO(b)).format for b in pool.images[2]] == ["JPEG", "PNG"]  # GIF stored as PNG


def test_jsonl_converts_with_a_report_of_rejects(tmp_path):
    lines = [json.dumps(r) for r in rows(tmp_path) if not any(isinstance(i, dict) for i in r.get("images", []))]
    lines.insert(1, "{not json")
    (tmp_path / "set.jsonl").write_text("\n".join(lines) + "\n")
    result, report = make_shards("--from", str(tmp_path / "set.jsonl"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert report["rejected"]["undecodable_json"] == 1 and report["written"] == 2


def test_parquet_with_paths_and_bytes_converts(tmp_path):
    table = rows(tmp_path)
    for row in table:  # one schema for every row: images as {bytes, path} structs, as HF datasets writes them
        row["images"] = [i if isinstance(i, dict) else {"bytes": None, "path": i} for i in row.get("images", [])]
        row.setdefault("difficulty", None)
        row.setdefault("domain", None)
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "set.parquet")
    result, report = make_shards("--from", str(tmp_path / "set.parquet"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    check(report, tmp_path / "out")


def test_a_file_with_no_usable_row_fails_clearly(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    result, _ = make_shards("--from", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "out"))
    assert result.returncode != 0 and "no usable rows" in result.stderr and "missing_field" in result.stderr
