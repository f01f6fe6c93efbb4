"""Convert a prompt set in JSONL, JSON or Parquet into WebDataset shards, checking every row.

Each row becomes one k15 record (``k15/data/shards.py``). Where a row keeps each field is its
*layout*: a preset (``--layout``) whose keys the key flags override; a dotted key reaches into a
nested column (a Parquet struct, read as a dict):

    layout           prompt    answer                      difficulty   solution
    k15 (default)    prompt    answer                      difficulty   solution
    dapo             prompt    reward_model.ground_truth   1            -          (DAPO-Math-17k, verl)
    problem-answer   problem   answer                      1            solution   (DeepScaleR, OpenR1-Math)

Prompt: a string, or chat messages (``[{"role", "content"}, …]``) whose one user turn's text is
kept, whole (DAPO's asks for a last line "Answer: …"). k15 applies the policy's chat template and
system prompt (model config) when it trains, so a dataset's chat wrapping must not be baked in:
system turns are dropped and counted (``dropped_system_turns``).
Answer: a string; a number is stored as its string (every reader compares ``str(answer)``); a
one-item list is its item. A longer list is rejected (``many_answers``): it may be the parts of a
multi-part answer, and keeping the first part only would score every complete answer as wrong.
Difficulty: an int, or a string ending in one ("Level 3" in MATH). A row without one takes the
layout's default difficulty if it has one, else it is ``missing_field``, as a k15 row always was.

A record keeps prompt, answer, difficulty, solution (a non-empty one: SFT imitates it) and source
(the row's ``source`` or ``data_source``, else the file's name); the k15 layout also keeps the
row's other top-level scalars (``domain``, ``task``: k15's own metadata). Nested columns (verl's
``reward_model``, ``extra_info``) are not carried: nothing reads them, and they would bloat every
shard. The sample key is the row's index in the file. An ``images`` list (any layout) holds paths
(relative to ``image_root``), bytes, or ``{"bytes", "path"}`` dicts as Hugging Face stores them.

Rows that would fail at training time are rejected and counted by reason: ``undecodable_json``
(a JSON line or item that is no object), ``missing_field``, ``empty_prompt``, ``bad_messages``,
``not_one_user_turn``, ``unexpected_role`` (an assistant or tool turn: a prompt cannot hold a
prefilled turn), ``empty_answer``, ``many_answers``, ``bad_difficulty`` ("Level ?"),
``missing_image``, ``bad_image``, and ``duplicate``: prompt, answer and images equal to an earlier
row's (the published DAPO-Math-17k repeats each problem many times; sampling would favour them).

Keys named by a flag or by the dapo / problem-answer preset are checked against the file before
anything is written (Parquet: its schema; JSON: its first ``KEY_CHECK_ROWS`` rows); one the file
lacks is a ``K15Error`` naming the flag. The k15 layout's own keys are checked row by row.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from k15.data.shards import image_decodes, record_problem
from k15.errors import K15Error

KEY_CHECK_ROWS = 1000
TRAILING_INT = re.compile(r"(\d+)\s*$")
SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class Layout:
    """Where a row keeps each field of k15's record. ``checked``: the key fields (``prompt_key``,
    …) that must exist in the file, checked before writing; flag ``--prompt-key`` sets ``prompt_key``."""

    name: str = "k15"
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    difficulty_key: str | None = "difficulty"
    default_difficulty: int | None = None
    solution_key: str | None = "solution"
    checked: tuple[str, ...] = ()


LAYOUTS = {
    "k15": Layout(),
    "dapo": Layout("dapo", "prompt", "reward_model.ground_truth", None, 1, None, ("prompt_key", "answer_key")),
    "problem-answer": Layout("problem-answer", "problem", "answer", None, 1, "solution", ("prompt_key", "answer_key")),
}


def choose_layout(name: str = "k15", **given) -> Layout:
    """Preset ``name`` with the fields in ``given`` that are not None put in; a key given is checked
    against the file. A preset's solution key is not checked: solutions are optional."""
    given = {field: value for field, value in given.items() if value is not None}
    preset = LAYOUTS[name]
    checked = tuple(dict.fromkeys(preset.checked + tuple(f for f in given if f.endswith("_key"))))
    return replace(preset, **given, checked=checked)


class Rejected(Exception):
    """A row is rejected; the argument is the reason counted in the report."""


def lookup(row: dict, key: str):
    """``row``'s value at dotted ``key`` (``reward_model.ground_truth``), None where absent.
    Lists are not entered: a key names a column or a struct's field, not an item."""
    value = row
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def key_paths(tree: dict, prefix: str = "") -> Iterator[str]:
    """The dotted keys of a nested dict, inner nodes included: ``{"a": {"b": 1}}`` → a, a.b."""
    for name, value in tree.items():
        yield prefix + name
        if isinstance(value, dict):
            yield from key_paths(value, f"{prefix}{name}.")


def arrow_tree(fields) -> dict:
    """A Parquet schema (or a struct type) as nested dicts of its field names, for ``key_paths``."""
    return {f.name: arrow_tree(f.type) if pa.types.is_struct(f.type) else None for f in fields}


def read_rows(path: Path) -> Iterator[dict | str]:
    """Rows of a ``.parquet`` file (read in batches: a large set need not fit in memory as Python
    objects), or of a JSON file: one object a line, or one array of objects (as some sets ship
    ``.json``). An item that is not an object yields its reason, ``undecodable_json``."""
    if path.suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    with path.open("rb") as file:
        is_array = file.read(4096).lstrip()[:1] == b"["
        file.seek(0)
        if is_array:
            try:
                items = json.load(file)
            except (UnicodeDecodeError, json.JSONDecodeError):
                items = [None]
        else:
            items = (json_line(line) for line in file if line.strip())
        for item in items:
            yield item if isinstance(item, dict) else "undecodable_json"


def json_line(line: bytes):
    """A JSON line's value, or None when it does not parse."""
    try:
        return json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def file_keys(path: Path) -> list[str]:
    """Every dotted key ``path`` has: from a Parquet schema, or from a JSON file's first rows."""
    if path.suffix == ".parquet":
        return list(key_paths(arrow_tree(pq.read_schema(path))))
    rows = itertools.islice((row for row in read_rows(path) if isinstance(row, dict)), KEY_CHECK_ROWS)
    return list(dict.fromkeys(key for row in rows for key in key_paths(row)))


def check_keys(path: Path, layout: Layout) -> None:
    """Raise ``K15Error`` naming the flag of the first checked key that ``path`` lacks."""
    known = file_keys(path)
    for field in layout.checked:
        key = getattr(layout, field)
        if key is not None and key not in known:
            shown = ", ".join(known[:30]) + (", …" if len(known) > 30 else "")
            raise K15Error(
                f"--{field.replace('_', '-')} {key!r}: no such key in {path.name} "
                f"(layout {layout.name}; the file has: {shown or 'no keys'})"
            )


def prompt_text(value) -> tuple[str, int]:
    """The prompt's text and the number of system turns dropped from it (messages: see above)."""
    if isinstance(value, str):
        return value, 0
    if not isinstance(value, list):
        raise Rejected("missing_field")
    if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        raise Rejected("bad_messages")
    roles = [m.get("role") for m in value]
    if set(roles) - {"system", "user"}:
        raise Rejected("unexpected_role")
    if roles.count("user") != 1:
        raise Rejected("not_one_user_turn")
    return value[roles.index("user")]["content"], roles.count("system")


def answer_text(value) -> str:
    """The reference answer as a string (lists and numbers: see above)."""
    if isinstance(value, list):
        if len(value) > 1:
            raise Rejected("many_answers")
        value = value[0] if value else None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Rejected("missing_field")
    if isinstance(value, float) and not math.isfinite(value):  # a pandas NaN stands for a missing answer
        raise Rejected("missing_field")
    if not str(value).strip():
        raise Rejected("empty_answer")
    return str(value)


def difficulty_value(value, default: int | None) -> int:
    """An int difficulty from an int (an integral float: pandas makes an int column with gaps a
    float one) or a string ending in an int ("Level 3"); ``default`` where ``value`` is None."""
    if value is None:
        if default is None:
            raise Rejected("missing_field")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = TRAILING_INT.search(value) if isinstance(value, str) else None
    if match is None:
        raise Rejected("bad_difficulty")
    return int(match.group(1))


def to_record(row: dict, layout: Layout, file_name: str) -> tuple[dict, Counter]:
    """k15's record for ``row`` and what was changed on the way (dropped system turns, a default
    difficulty); raises ``Rejected``."""
    prompt, system_turns = prompt_text(lookup(row, layout.prompt_key))
    answer = answer_text(lookup(row, layout.answer_key))
    raw = lookup(row, layout.difficulty_key) if layout.difficulty_key else None
    difficulty = difficulty_value(raw, layout.default_difficulty)
    source = next((s for s in (row.get("source"), row.get("data_source")) if isinstance(s, str) and s), file_name)
    record = {}
    if layout.name == "k15":  # its other scalar fields; a key's own column is not kept twice
        keys = (layout.prompt_key, layout.answer_key, layout.difficulty_key, layout.solution_key, "solution", "images")
        used = {key.split(".")[0] for key in keys if key}
        record = {k: v for k, v in row.items() if k not in used and type(v) in SCALARS}
    record |= {"prompt": prompt, "answer": answer, "difficulty": difficulty, "source": source}
    solution = lookup(row, layout.solution_key) if layout.solution_key else None
    if isinstance(solution, str) and solution.strip():
        record["solution"] = solution
    problem = record_problem(record)
    if problem:
        raise Rejected(problem)
    return record, Counter(dropped_system_turns=system_turns, defaulted_difficulty=int(raw is None))


def image_bytes(item, image_root: Path) -> bytes:
    if isinstance(item, dict):
        item = item.get("bytes") or item.get("path")
    if isinstance(item, bytes):
        return item
    file = image_root / str(item)
    if not file.is_file():
        raise Rejected("missing_image")
    return file.read_bytes()


def to_sample(row: dict, key: str, image_root: Path, layout: Layout, file_name: str) -> tuple[dict, Counter] | str:
    """The WebDataset sample for ``row`` and the record's changes (``to_record``), or why it is rejected."""
    try:
        record, changes = to_record(row, layout, file_name)
        sample = {"__key__": key, "json": record}
        for j, item in enumerate(row.get("images") or []):
            data = image_bytes(item, image_root)
            if not image_decodes(data):
                raise Rejected("bad_image")
            with Image.open(io.BytesIO(data)) as image:
                extension = {"PNG": "png", "JPEG": "jpg"}.get(image.format)
                if extension is None:  # another format: store it as PNG
                    png = io.BytesIO()
                    image.save(png, format="PNG")
                    data, extension = png.getvalue(), "png"
            sample[f"{j:02d}.{extension}"] = data
    except Rejected as reason:
        return str(reason)
    return sample, changes


def fingerprint(sample: dict) -> bytes:
    """A digest of the sample's prompt, answer and image bytes: equal for duplicate rows."""
    digest = hashlib.blake2b(digest_size=16)
    images = [sample[name] for name in sorted(sample) if name not in ("__key__", "json")]
    for part in (sample["json"]["prompt"].encode(), sample["json"]["answer"].encode(), *images):
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.digest()


def convert(
    source: Path,
    pattern: str,
    image_root: Path | None = None,
    records_per_shard: int = 5000,
    layout: Layout | None = None,
) -> dict:
    """Write the good rows of ``source`` to shards named by ``pattern``; return the report.

    ``layout`` defaults to the k15 layout. Raises ``K15Error`` before writing anything when
    ``source`` lacks a checked key of ``layout``.
    """
    layout = layout or LAYOUTS["k15"]
    check_keys(source, layout)
    image_root = image_root or source.parent
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    rejected, difficulty, changes, seen, read, written = Counter(), Counter(), Counter(), set(), 0, 0
    with wds.ShardWriter(pattern, maxcount=records_per_shard, verbose=0) as sink:
        for read, row in enumerate(read_rows(source), start=1):
            result = row if isinstance(row, str) else to_sample(row, f"{read - 1:08d}", image_root, layout, source.name)
            if isinstance(result, tuple):
                digest = fingerprint(result[0])
                result = "duplicate" if digest in seen else result
                seen.add(digest)
            if isinstance(result, str):
                rejected[result] += 1
                continue
            sample, row_changes = result
            sink.write(sample)
            written += 1
            difficulty[sample["json"]["difficulty"]] += 1
            changes += row_changes
    layout_report = {k: v for k, v in asdict(layout).items() if k != "checked"}
    return {
        "read": read,
        "written": written,
        "rejected": dict(rejected),
        "difficulty": dict(sorted(difficulty.items())),
        "layout": layout_report,
        "dropped_system_turns": changes["dropped_system_turns"],
        "defaulted_difficulty": changes["defaulted_difficulty"],
    }
