"""WebDataset shards of task records: write them, and read them back with the one reader every
data path uses (RL prompts, SFT, held-out, judging records, the curriculum pool).

A record is one JSON object per sample, stored as ``<key>.json`` inside the tar, with zero or
more images beside it (``<key>.png``, ``<key>.jpg``, or ``<key>.0.png``, ``<key>.1.png``, …):

    {"prompt": str, "answer": str, "difficulty": int, "solution": str, "domain": str, "source": str}

``solution`` (a worked chain of thought ending in the answer) is what SFT imitates; RL only needs
prompt, answer and difficulty. The reader hands each record out with its encoded images under
``images`` and a stable key ``"<shard file name>:<sample key>"`` under ``__key__``.

Bad input loses samples, never the run. The reader skips them and counts each by reason in a
``Counter`` its caller passes in:

    not_a_file        the shard path is a directory or otherwise not a regular file (never opened)
    corrupt_shard     a truncated or corrupt tar or gzip, or a zero-byte file: counted once per
                      shard; the records before the damage are kept, the rest of the shard is lost
    undecodable_json  the json member is absent, not UTF-8, not JSON, or not an object
    missing_field     a required field (the caller names them, with their types) is absent or mistyped
    empty_prompt      the prompt is empty or only whitespace
    bad_image         an image member PIL cannot decode

The data modules add ``too_long`` (a prompt the policy has no room for), see ``k15/data/prompts.py``.
"""

from __future__ import annotations

import glob
import gzip
import io
import itertools
import json
import os
import random
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import webdataset as wds
from PIL import Image
from webdataset import filters
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys
from webdataset.utils import pytorch_worker_info

from k15.errors import K15Error

# required fields and the JSON types each may have (exact types: a bool is not a difficulty)
PROMPT_FIELDS = {"prompt": (str,), "answer": (str, int, float), "difficulty": (int,)}
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")
# what a damaged shard raises while read: tar (ReadError, …), gzip (BadGzipFile, EOFError: cut
# short), zlib (bad compressed data), the OS, and group_by_keys (a member name twice in a sample)
SHARD_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


def record_problem(record, fields: dict[str, tuple[type, ...]] = PROMPT_FIELDS) -> str | None:
    """Why ``record`` lacks what its use needs (``missing_field``, ``empty_prompt``), or None."""
    if not isinstance(record, dict) or any(type(record.get(name)) not in types for name, types in fields.items()):
        return "missing_field"
    if "prompt" in fields and not record["prompt"].strip():
        return "empty_prompt"
    return None


def sample_images(sample: dict) -> list[bytes]:
    """A WebDataset sample's image members, encoded, in member-name order."""
    return [sample[name] for name in sorted(sample) if name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS]


def image_decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except Exception:  # PIL raises several types for broken files
        return False


def skip_summary(skipped: Counter) -> str:
    """``2 corrupt_shard, 1 missing_field`` (or ``none``): skip counts for a one-line report."""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"


def write_shards(records: Iterable[dict], pattern: str, records_per_shard: int = 5000) -> int:
    """Write ``records`` to tar shards named by ``pattern`` (e.g. ``shards/x/train-%06d.tar``)."""
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with wds.ShardWriter(pattern, maxcount=records_per_shard, verbose=0) as sink:
        for count, record in enumerate(records, start=1):
            sink.write({"__key__": f"{count - 1:08d}", "json": record})
    return count


def shard_urls(pattern: str) -> list[str]:
    """Brace patterns (``train-{000000..000003}.tar``) and globs (``train-*.tar``) to a sorted list."""
    urls = sorted(u for part in expand_urls(pattern) for u in (glob.glob(part) or [part]))
    missing = [u for u in urls if "://" not in u and not Path(u).exists()]
    if not urls or missing:
        raise FileNotFoundError(f"no shards match {pattern!r}" + (f" (missing: {missing[:3]})" if missing else ""))
    return urls


class RecordedReads:
    """A byte stream that remembers how much it has handed out and its last bytes, so the tar
    reader's stopping point can be checked afterwards (it reads ahead by at most one record)."""

    KEEP = 4 * tarfile.RECORDSIZE

    def __init__(self, stream):
        self.stream, self.position, self.tail = stream, 0, bytearray()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.position += len(data)
        self.tail += data
        del self.tail[: -self.KEEP]
        return data

    def block_at(self, offset: int) -> bytes:
        start = offset - (self.position - len(self.tail))
        return bytes(self.tail[start : start + tarfile.BLOCKSIZE]) if start >= 0 else b""


def tar_members(stream: RecordedReads, url: str) -> Iterator[dict]:
    """The regular members of a tar stream, as webdataset's ``group_by_keys`` takes them.

    Raises ``tarfile.ReadError`` for a damaged archive. Python's tar reader takes a header it
    cannot parse, or an archive cut between two members, for the archive's end; a real end is a
    zero block, so the block it stopped at is checked. Reading the rest then lets gzip check its
    own end and checksum (a cut in the padding after the tar's end, a flipped byte that still
    inflated). Gzip raises as it goes (EOFError where its stream is cut), so .gz is read once.
    """
    tar = tarfile.open(fileobj=stream, mode="r|")
    for info in tar:
        if info.isreg():
            yield {"fname": info.name, "data": tar.extractfile(info).read(), "__url__": url}
        tar.members = []  # a stream has no use for the members already read
    if stream.block_at(tar.offset) != bytes(tarfile.BLOCKSIZE):
        raise tarfile.ReadError(
            f"{url}: no end-of-archive block at offset {tar.offset} (a damaged header, or the file is cut short)"
        )
    while stream.read(1 << 16):
        pass


def shard_samples(url: str, skipped: Counter) -> Iterator[dict]:
    """One shard's samples (members grouped by key); its damage is counted once and ends it."""
    local = "://" not in url and not url.startswith("pipe:")
    if local and not os.path.isfile(url):
        skipped["not_a_file"] += 1
        return
    try:
        with open(url, "rb") if local else gopen(url) as raw:
            stream = gzip.GzipFile(fileobj=raw) if url.endswith((".gz", ".tgz")) else raw
            yield from group_by_keys(tar_members(RecordedReads(stream), url))
    except SHARD_ERRORS:
        skipped["corrupt_shard"] += 1


def pool_key(sample: dict) -> str:
    """A sample's key: ``"<shard file name>:<sample key>"``. The shard's folder is left out so the
    key is stable across checkouts and copies; the pool, curation reports and origin_key use it."""
    return f"{Path(sample['__url__']).name}:{sample['__key__']}"


def sample_record(sample: dict, fields: dict[str, tuple[type, ...]], check_images: bool) -> dict | str:
    """The sample's record (with ``images`` and ``__key__``), or the reason to skip it."""
    try:
        record = json.loads(sample["json"].decode("utf-8"))
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
        return "undecodable_json"
    if not isinstance(record, dict):
        return "undecodable_json"
    problem = record_problem(record, fields)
    if problem:
        return problem
    images = sample_images(sample)
    if check_images and not all(image_decodes(data) for data in images):
        return "bad_image"
    return record | {"images": images, "__key__": pool_key(sample)}


def shard_records(
    url: str, skipped: Counter, fields: dict[str, tuple[type, ...]], check_images: bool
) -> Iterator[dict]:
    for sample in shard_samples(url, skipped):
        record = sample_record(sample, fields, check_images)
        if isinstance(record, str):
            skipped[record] += 1
        else:
            yield record


def read_records(
    urls: list[str],
    skipped: Counter | None = None,
    fields: dict[str, tuple[type, ...]] = PROMPT_FIELDS,
    shuffle_buffer: int = 0,
    seed: int = 0,
    split_by_rank: bool = True,
    check_images: bool = True,
) -> Iterator[dict]:
    """One pass over the valid records of ``urls``; bad samples are skipped and counted in ``skipped``.

    ``fields`` are the required fields and their types. ``shuffle_buffer`` > 0 shuffles the shard
    order and then the records in a buffer of that size, both seeded by ``seed``. With
    ``split_by_rank`` each rank (and data-loader worker) reads its own subset of the shards;
    without it every process reads them all. ``check_images=False`` leaves ``bad_image`` to a
    caller that decodes the images anyway (and so never decodes them twice).
    """
    skipped = Counter() if skipped is None else skipped
    order = list(urls)
    if shuffle_buffer:
        random.Random(seed).shuffle(order)
    if split_by_rank:
        order = list(wds.split_by_worker(wds.split_by_node(order)))
    records = (record for url in order for record in shard_records(url, skipped, fields, check_images))
    if shuffle_buffer:
        records = filters.shuffle(shuffle_buffer, rng=random.Random(seed))(records)
    yield from records


class RecordStream:
    """One process's training records, pass after pass, resumable at any record.

    Each pass reads this rank's shards (``read_records`` with ``split_by_rank``), reshuffled with
    seed + pass. ``position`` counts the records handed out; ``restore`` re-reads up to a saved
    position without preparing a record (no tokenising, no image decoding), so a resumed run
    goes on with the records the uninterrupted run would have had. The skip counts (the
    reader's and the consumer's) are in ``skipped``.

    Images are not checked while reading: ``take``'s consumer decodes them anyway and reports a
    bad one as ``bad_image``, so a fast-forward never decodes an image.
    """

    def __init__(
        self, urls: list[str], fields: dict[str, tuple[type, ...]], shuffle_buffer: int, seed: int, source: str
    ):
        self.urls, self.fields, self.shuffle_buffer, self.seed, self.source = urls, fields, shuffle_buffer, seed, source
        self.skipped: Counter = Counter()
        self.position = 0
        self.rejected_in_a_row = 0  # records ``take`` skipped since it last kept one
        self.records: Iterator[dict] | None = None

    def passes(self) -> Iterator[dict]:
        for epoch in itertools.count():
            count = 0
            for record in read_records(
                self.urls, self.skipped, self.fields, self.shuffle_buffer, self.seed + epoch, check_images=False
            ):
                count += 1
                yield record
            if count == 0 or self.rejected_in_a_row >= count:  # a whole pass gave nothing usable: it would spin forever
                rank, world, _, _ = pytorch_worker_info()
                share = f", rank {rank} of {world} reading its own share of them" if world > 1 else ""
                raise K15Error(
                    f"no usable record in {self.source} ({len(self.urls)} shard(s){share}); skipped: "
                    f"{skip_summary(self.skipped)}"
                )

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self.records is None:
            self.records = self.passes()
        record = next(self.records)
        self.position += 1
        return record

    def take(self, n: int, prepare: Callable[[dict], object]) -> list:
        """The next ``n`` usable items: ``prepare(record)`` gives an item, or the reason (a ``str``) to skip it."""
        items = []
        while len(items) < n:
            item = prepare(next(self))
            if isinstance(item, str):
                self.skipped[item] += 1
                self.rejected_in_a_row += 1
            else:
                items.append(item)
                self.rejected_in_a_row = 0
        return items

    def restore(self, position: int, skipped: dict[str, int]) -> None:
        """Continue from ``position`` records into the stream, with the skip counts saved there."""
        self.records, self.position, self.rejected_in_a_row = None, 0, 0
        for _ in range(position):
            next(self)
        self.skipped.clear()  # the reader keeps counting into this same Counter
        self.skipped.update(skipped)
