"""Bad shards and samples on every data path: skipped and counted by reason, the good records all
arriving; a set with nothing usable is one K15Error naming its shards; and a stream with bad
records in it resumes exactly where its checkpoint was taken.

The shards are real WebDataset tars (and .tar.gz) written here, then damaged; the data modules
run against a real Trainer with the real lightning module they serve (a PolicyModule, an
SFTModule, a ScalarRMModule over tiny character models that are never built) and a CSV logger,
so the counts are checked where a user reads them.
"""

import copy
import csv
import gzip
import json
import os
import re
from collections import Counter

import lightning
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from tars import tar_bytes

from k15.data.arithmetic import ALPHABET
from k15.data.curriculum import CurriculumDataModule
from k15.data.judging import JudgingDataModule
from k15.data.prompts import PromptDataModule
from k15.data.sft import SFTDataModule
from k15.data.shards import read_records, shard_urls
from k15.errors import K15Error
from k15.models import TinyQwen2
from k15.models.tiny import char_tokenizer
from k15.policy import PolicyModule
from k15.reward.judge_prompt import JUDGE_ALPHABET
from k15.reward.scalar_rm import ScalarRMModule
from k15.rollout import RolloutCallback
from k15.rollout.hf import HFEngine
from k15.sft import SFTModule

CONTEXT = 64  # the tiny models' max_position_embeddings
ROLLOUT_TOKENS = 16  # RL prompts may have up to 64 − 16 = 48 tokens
HELDOUT_TOKENS = 32  # held-out prompts up to 64 − 32 = 32
PATHS = ("prompts", "heldout", "sft", "judging", "pool")


def record(path: str, i: int, tokens: int = 0) -> dict:
    """Record i of ``path``'s kind; ``tokens`` > 0: a prompt of that many tokens (with <bos>)."""
    prompt = f"Q:{i}+1=" if not tokens else f"Q:{i}+" + "1" * (tokens - 1 - len(f"Q:{i}+=")) + "="  # <bos> + characters
    if path == "judging":
        return {"question": prompt, "reference": str(i + 1), "response": f"A:{i + 1}", "correct": True}
    return {"prompt": prompt, "answer": str(i + 1), "difficulty": 1} | (
        {"solution": f"A:{i + 1}"} if path == "sft" else {}
    )


def identity(path: str, rec: dict) -> str:
    return rec["question" if path == "judging" else "prompt"]


def write_tar(file, records: dict[str, dict | bytes]) -> None:
    file.write_bytes(
        tar_bytes({f"{key}.json": r if isinstance(r, bytes) else json.dumps(r).encode() for key, r in records.items()})
    )


def too_long(path: str) -> dict:
    """Just past the path's own limit: an RL prompt of 49 tokens would still do as held-out's 33, and
    an SFT prompt that fits with a solution that does not."""
    if path == "sft":
        return record(path, 90, tokens=20) | {"solution": "1" * (CONTEXT - 20)}
    return record(path, 90, tokens={"heldout": 33}.get(path, 49))


CASES = {  # damage written as train-0* (read first); reason counted, or None where nothing is skipped
    "truncated_tar_gz": "corrupt_shard",
    "zero_byte": "corrupt_shard",
    "flipped_bytes": "corrupt_shard",
    "invalid_utf8_json": "undecodable_json",
    "missing_field": "missing_field",
    "over_long_prompt": "too_long",
    "bad_image": "bad_image",
    "directory": "not_a_file",
}


def write_case(folder, path: str, case: str) -> tuple[set[str], set[str]]:
    """Shards train-1, train-2 of good records, and the damage; returns the identities of the
    good records and of the damaged ones (of a damaged shard, those before the damage may arrive)."""
    folder.mkdir()
    for shard in (1, 2):
        write_tar(folder / f"train-{shard}.tar", {f"{shard}{j}": record(path, 10 * shard + j) for j in range(3)})
    damaged = {f"d{j}": record(path, 100 + j) for j in range(20)}
    sentinel = {"z": record(path, 5)}  # a good record after a bad sample: the shard goes on
    if case == "truncated_tar_gz":
        write_tar(folder / "train-0.tar", damaged)
        whole = gzip.compress((folder / "train-0.tar").read_bytes())
        (folder / "train-0.tar").unlink()
        (folder / "train-0.tar.gz").write_bytes(whole[: len(whole) // 2])
    elif case == "zero_byte":
        (folder / "train-0.tar.gz").write_bytes(b"")
    elif case == "flipped_bytes":  # the 2nd member's header: Python's tar reader would take it for the end
        data = bytearray(tar_bytes({f"{k}.json": json.dumps(r).encode() for k, r in damaged.items()}))
        data[1024 + 100 : 1024 + 110] = bytes(b ^ 0xFF for b in data[1024 + 100 : 1024 + 110])
        (folder / "train-0.tar").write_bytes(bytes(data))
    elif case == "invalid_utf8_json":
        write_tar(
            folder / "train-0.tar",
            {"a": json.dumps(record(path, 100)).replace("Q:", "Q\xe9:").encode("latin-1")} | sentinel,
        )
    elif case == "missing_field":
        write_tar(
            folder / "train-0.tar",
            {"a": {k: v for k, v in record(path, 100).items() if k not in ("answer", "correct")}} | sentinel,
        )
    elif case == "over_long_prompt":
        damaged = {"a": too_long(path)}
        write_tar(folder / "train-0.tar", damaged | sentinel)
    elif case == "bad_image":
        damaged = {"a": record(path, 100)}
        members = {
            "a.json": json.dumps(damaged["a"]).encode(),
            "a.png": b"\x89PNG not really",
            "z.json": json.dumps(sentinel["z"]).encode(),
        }
        (folder / "train-0.tar").write_bytes(tar_bytes(members))
    elif case == "directory":
        (folder / "train-0.d").mkdir()
    good = {identity(path, r) for shard in (1, 2) for r in (record(path, 10 * shard + j) for j in range(3))}
    if case in ("invalid_utf8_json", "missing_field", "over_long_prompt", "bad_image"):
        good.add(identity(path, sentinel["z"]))
    return good, {identity(path, r) for r in damaged.values()}


def trainer_for(path: str, log_dir) -> lightning.Trainer:
    """A Trainer holding the lightning module the path serves (its tokenizer and token limits)."""
    if path == "judging":
        module = ScalarRMModule(TinyQwen2(JUDGE_ALPHABET, max_position_embeddings=CONTEXT))
    elif path == "sft":
        module = SFTModule(TinyQwen2(ALPHABET, max_position_embeddings=CONTEXT), heldout_max_new_tokens=HELDOUT_TOKENS)
    else:
        rollout = RolloutCallback(HFEngine(), max_new_tokens=ROLLOUT_TOKENS)
        module = PolicyModule(
            TinyQwen2(ALPHABET, max_position_embeddings=CONTEXT), rollout, heldout_max_new_tokens=HELDOUT_TOKENS
        )
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(log_dir, name="log"),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    return trainer


def data_module(path: str, pattern: str, trainer: lightning.Trainer):
    cls = {
        "prompts": PromptDataModule,
        "heldout": PromptDataModule,
        "sft": SFTDataModule,
        "judging": JudgingDataModule,
        "pool": CurriculumDataModule,
    }[path]
    size = {"sft": {"examples_per_step": 1}, "judging": {"examples_per_step": 1}}.get(
        path, {"prompts_per_iteration": 1}
    )
    dm = cls(pattern, pattern, shuffle_buffer=0, heldout_prompts=100, **size)
    dm.trainer = trainer
    dm.setup("fit")
    return dm


def arrivals(path: str, dm, good: set[str]) -> list[str]:
    """What the path hands its consumer: held-out records, the pool, or training batches drawn one
    record at a time until every good record has come (within the stream's first pass)."""
    if path == "heldout":
        return [identity(path, r) for r in dm.heldout_records()]
    if path == "pool":
        return list(dm.pool.prompts)
    seen = []
    while not good <= set(seen) and len(seen) < 40:
        batch = dm.on_before_batch_transfer(len(seen), 0)  # a placeholder in, a batch out, as in the loop
        if path == "prompts":
            seen += batch.prompts
        elif path == "judging":
            seen += batch.questions
        else:
            text = dm.tokenizer.decode(batch.input_ids[0], skip_special_tokens=True)
            seen.append(text[: text.index("=") + 1])
    return seen


def logged(trainer: lightning.Trainer) -> dict[str, float]:
    """The last value logged under each name."""
    trainer.logger.save()
    if not os.path.exists(f"{trainer.logger.log_dir}/metrics.csv"):
        return {}  # nothing was logged
    with open(f"{trainer.logger.log_dir}/metrics.csv") as rows:
        return {
            name: float(value)
            for row in csv.DictReader(rows)
            for name, value in row.items()
            if value and name != "step"
        }


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", PATHS)
def test_a_bad_sample_or_shard_is_skipped_counted_and_the_rest_arrive(tmp_path, path, case):
    reason = (
        CASES[case] if not (path == "judging" and case in ("over_long_prompt", "bad_image")) else None
    )  # a reward model
    good, damaged = write_case(tmp_path / "shards", path, case)  # checks no length and uses no image
    trainer = trainer_for(path, tmp_path)
    dm = data_module(path, str(tmp_path / "shards/train-*"), trainer)

    seen = arrivals(path, dm, good)
    assert good <= set(seen) and set(seen) <= good | damaged, (good, seen)
    assert len(seen) == len(set(seen))  # within one pass: nothing twice
    if reason is None:
        assert damaged <= set(seen)
    else:
        assert not damaged <= set(seen)  # a damaged shard keeps at most the records before the damage
    if path == "pool":
        dm.draw()  # the curriculum logs its load counts with every draw
    counts = {name.rsplit("/", 1)[1]: n for name, n in logged(trainer).items() if "/skipped/" in name}
    prefix = "heldout" if path == "heldout" else "data"
    assert counts == ({reason: 1} if reason else {}), logged(trainer)
    assert all(name.startswith(f"{prefix}/skipped/") for name in logged(trainer) if "/skipped/" in name)


# a scalar reward model checks no length, so "everything too long" is not a judging case
@pytest.mark.parametrize(
    ("path", "everything"), [(p, e) for p in PATHS for e in ("broken", "too_long") if (p, e) != ("judging", "too_long")]
)
def test_a_set_with_nothing_usable_is_one_error_naming_its_shards(tmp_path, path, everything):
    folder = tmp_path / "shards"
    folder.mkdir()
    if everything == "broken":
        (folder / "train-0.tar.gz").write_bytes(b"")
        (folder / "train-1.d").mkdir()
        write_tar(folder / "train-2.tar", {"a": {"text": "no fields"}, "b": b"\xff not json"})
    else:
        write_tar(folder / "train-0.tar", {f"a{j}": too_long(path) for j in range(3)})
    pattern = str(folder / "train-*")
    trainer = trainer_for(path, tmp_path)
    with pytest.raises(K15Error, match=re.escape(repr(pattern))) as error:
        dm = data_module(path, pattern, trainer)  # the pool is read at setup
        if path == "heldout":
            dm.heldout_records()
        else:
            dm.on_before_batch_transfer(0, 0)
    assert "\n" not in str(error.value) and "no usable" in str(error.value)
    assert ("1 corrupt_shard" in str(error.value)) == (everything == "broken")


def test_the_counts_are_printed_once_at_the_first_read(tmp_path, caplog):
    good, _ = write_case(tmp_path / "shards", "prompts", "missing_field")
    dm = data_module("prompts", str(tmp_path / "shards/train-*"), trainer_for("prompts", tmp_path))
    with caplog.at_level("INFO"):
        for i in range(3):
            dm.on_before_batch_transfer(i, 0)
        dm.heldout_records()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("k15:")]
    assert lines == [
        f"k15: streaming RL prompts from 3 shard(s) of {str(tmp_path / 'shards/train-*')!r}; skipped so far: 1 "
        "missing_field",
        "k15: 7 held-out RL prompts loaded; skipped: 1 missing_field",
    ], lines


def gz_of(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)


def test_the_reader_finds_every_cut_and_flip_and_keeps_what_came_before(tmp_path):
    records = {f"{j:03d}": {"prompt": f"Q:{j}+1=" + "1" * 300, "answer": "1", "difficulty": 1} for j in range(30)}
    raw = tar_bytes({f"{k}.json": json.dumps(r).encode() for k, r in records.items()})
    member = 512 + 512  # one header + one data block per record
    gz = gz_of(raw)
    damaged = {
        **{f"gz_cut_{n}.tar.gz": gz[: len(gz) * n // 10] for n in range(1, 10)},  # the gzip stream cut short
        **{f"tar_cut_{n}.tar": raw[: member * n] for n in (1, 7, 30)},  # cut between members: no end-of-archive block
        **{
            f"tar_cut_{n}.tar.gz": gz_of(raw[: member * n]) for n in (1, 7, 30)
        },  # …then gzipped whole: only the tar tells
        "gz_flip.tar.gz": gz[: len(gz) // 2] + bytes([gz[len(gz) // 2] ^ 0xFF]) + gz[len(gz) // 2 + 1 :],
        "gz_crc.tar.gz": gz[:-8] + bytes([gz[-8] ^ 0xFF]) + gz[-7:],  # the checksum at the very end
        "header_flip.tar": raw[: member * 5 + 100]
        + bytes(b ^ 0xFF for b in raw[member * 5 + 100 : member * 5 + 110])
        + raw[member * 5 + 110 :],
    }
    order = list(records)
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
        skipped = Counter()
        got = [r["__key__"].split(":")[1] for r in read_records([str(tmp_path / name)], skipped)]
        assert skipped["corrupt_shard"] == 1 and (skipped == {"corrupt_shard": 1} or name == "gz_flip.tar.gz"), (
            name,
            skipped,
        )
        assert got == order[: len(got)], name  # records before the damage, in order
    # the sample being read when the damage came is lost too (its other members may be)
    assert (
        len(read_records_of(tmp_path, "header_flip.tar")) == 4
        and len(read_records_of(tmp_path, "tar_cut_30.tar")) == 29
    )

    (tmp_path / "whole.tar").write_bytes(raw)  # and no false alarm: whole shards, gzipped or not, and an empty one
    (tmp_path / "whole.tar.gz").write_bytes(gz)
    (tmp_path / "empty.tar").write_bytes(tar_bytes({}))
    skipped = Counter()
    assert (
        len(list(read_records([str(tmp_path / n) for n in ("whole.tar", "whole.tar.gz", "empty.tar")], skipped))) == 60
    )
    assert not skipped


def read_records_of(folder, name: str) -> list[dict]:
    return list(read_records([str(folder / name)], Counter()))


def test_a_directory_is_counted_once_never_opened_and_is_no_start_up_error(tmp_path):
    write_tar(tmp_path / "train-1.tar", {"a": record("prompts", 1)})
    (tmp_path / "train-2.tar").mkdir()
    urls = shard_urls(str(tmp_path / "train-*.tar"))
    assert len(urls) == 2
    skipped = Counter()
    assert len(list(read_records(urls, skipped))) == 1 and skipped == {"not_a_file": 1}


def stream_set(folder, path: str) -> str:
    """Three shards of 8 records, among them too-long ones, one missing a field, and a truncated shard."""
    folder.mkdir()
    for shard in range(3):
        records = {f"{j}": too_long(path) if j in (2, 5) else record(path, 10 * shard + j) for j in range(8)}
        records["x"] = {"note": "no fields"}
        write_tar(folder / f"train-{shard}.tar", records)
    (folder / "train-3.tar").write_bytes((folder / "train-0.tar").read_bytes()[:3000])
    return str(folder / "train-*")


def contents(batch) -> list:
    return (
        batch.input_ids.tolist() if hasattr(batch, "input_ids") else getattr(batch, "prompts", None) or batch.questions
    )


@pytest.mark.parametrize("path", ["prompts", "sft", "judging"])
def test_a_restored_stream_draws_the_uninterrupted_batches(tmp_path, path):
    pattern = stream_set(tmp_path / "shards", path)

    def fresh():
        cls, size = {
            "prompts": (PromptDataModule, "prompts_per_iteration"),
            "sft": (SFTDataModule, "examples_per_step"),
            "judging": (JudgingDataModule, "examples_per_step"),
        }[path]
        dm = cls(pattern, pattern, shuffle_buffer=5, seed=1, **{size: 3})
        dm.trainer = trainer_for(path, tmp_path)
        dm.setup("fit")
        return dm

    first = fresh()
    drawn = [contents(first.on_before_batch_transfer(i, 0)) for i in range(5)]
    state = copy.deepcopy(first.state_dict())
    drawn += [contents(first.on_before_batch_transfer(i, 0)) for i in range(5, 14)]
    resumed = fresh()
    resumed.load_state_dict(state)
    assert [contents(resumed.on_before_batch_transfer(i, 0)) for i in range(5, 14)] == drawn[5:]
    assert resumed.stream.skipped == first.stream.skipped
    assert (
        first.stream.skipped["corrupt_shard"] >= 2 and first.stream.skipped["missing_field"] >= 3
    )  # bad records met, on two passes
    assert first.stream.skipped["too_long"] >= 6 if path != "judging" else "too_long" not in first.stream.skipped
    rows = [repr(row) for batch in drawn for row in batch]
    assert len(set(rows)) < len(rows)  # 42 draws from a pass of ≤ 21: the second pass is in there


def test_a_checkpoint_of_another_world_size_is_a_clear_error(tmp_path):
    pattern = stream_set(tmp_path / "shards", "prompts")
    dm = data_module("prompts", pattern, trainer_for("prompts", tmp_path))
    state = {"streams": [{"position": 3, "skipped": {}}, {"position": 4, "skipped": {}}]}
    with pytest.raises(K15Error, match="2 process.*this run has 1"):
        dm.load_state_dict(state)


class Recorder(lightning.LightningModule):
    """Stands in for the policy in a real fit loop: its tokenizer and prompt limit, one trivial
    optimizer step per batch (checkpoints follow optimizer steps), and the prompts it was given."""

    max_rollout_prompt_tokens = CONTEXT - ROLLOUT_TOKENS

    def __init__(self):
        super().__init__()
        self.tokenizer, self.processor, self.prompt_format = char_tokenizer(ALPHABET), None, None
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.prompts = []

    def training_step(self, batch, batch_idx):
        self.prompts.append(batch.prompts)
        return self.weight.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(pattern: str, checkpoints, ckpt_path: str | None = None) -> list[list[str]]:
    """Two epochs of 3 iterations through Lightning's own loop (which prefetches a batch ahead)."""
    module = Recorder()
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(checkpoints, every_n_train_steps=1, save_top_k=-1)],
    )
    trainer.fit(
        module,
        datamodule=PromptDataModule(pattern, pattern, shuffle_buffer=5, seed=1, prompts_per_iteration=3, iterations=3),
        ckpt_path=ckpt_path,
    )
    return module.prompts


@pytest.mark.parametrize("after", [2, 4])  # mid-epoch, and in the second epoch
def test_a_run_resumed_from_its_checkpoint_gets_the_uninterrupted_prompts(tmp_path, after):
    pattern = stream_set(tmp_path / "shards", "prompts")
    uninterrupted = fit(pattern, tmp_path / "run")
    assert not set(sum(uninterrupted[3:], [])) & set(
        sum(uninterrupted[:3], [])
    )  # epoch 2 goes on; it does not start over
    (checkpoint,) = (tmp_path / "run").glob(f"epoch=*-step={after}.ckpt")
    assert fit(pattern, tmp_path / "resumed", str(checkpoint)) == uninterrupted[after:]


def _draw_on_rank(rank: int, folder: str, results) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2, timeout=timedelta(minutes=2)
    )
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.strategy.connect(Recorder())
    dm = PromptDataModule(f"{folder}/train-*.tar", f"{folder}/train-*.tar", shuffle_buffer=0, prompts_per_iteration=2)
    dm.trainer = trainer
    dm.setup("fit")
    prompts = [p for i in range(rank + 1) for p in dm.on_before_batch_transfer(i, 0).prompts]
    results[rank] = (dm.state_dict(), prompts)
    dist.destroy_process_group()


@pytest.mark.multiprocess
def test_every_rank_reads_its_own_shards_and_the_checkpoint_holds_every_ranks_position(tmp_path):
    import torch.multiprocessing as mp

    for shard in range(2):
        write_tar(
            tmp_path / f"train-{shard}.tar",
            {"x": {"no": "fields"}} | {f"{j}": record("prompts", 10 * shard + j) for j in range(5)},
        )
    results = mp.Manager().dict()
    mp.spawn(_draw_on_rank, args=(str(tmp_path), results), nprocs=2)
    (state, prompts_0), (same_state, prompts_1) = results[0], results[1]
    assert state == same_state  # all-gathered: rank 0's copy is the one saved
    assert [s["position"] for s in state["streams"]] == [2, 4]
    assert prompts_0 == ["Q:0+1=", "Q:1+1="] and prompts_1 == ["Q:10+1=", "Q:11+1=", "Q:12+1=", "Q:13+1="]
    assert all(s["skipped"] == {"missing_field": 1} for s in state["streams"])
