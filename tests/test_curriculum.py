"""CurriculumDataModule: stage filters, prioritized frequencies, exact resume, and bad shards
skipped and counted (fixtures made here from real shards: truncated, byte-flipped, bad fields)."""

import io
import json

import lightning
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tars import tar_bytes

from k15.data.curriculum import CurriculumDataModule
from k15.data.pool import load_pool
from k15.data.sampling import Stage, sampling_weights, stage_at
from k15.data.shards import shard_urls, write_shards
from k15.errors import K15Error
from k15.models.tiny import char_tokenizer


def records(n: int, difficulty=lambda i: 1 + i % 5) -> list[dict]:
    return [{"prompt": f"Q:{i}+{i}=", "answer": str(2 * i), "difficulty": difficulty(i)} for i in range(n)]


def data_module(tmp_path, n=40, **kwargs) -> CurriculumDataModule:
    if not (tmp_path / "train-000000.tar").exists():
        write_shards(records(n), str(tmp_path / "train-%06d.tar"), records_per_shard=20)
        write_shards(records(4), str(tmp_path / "heldout-%06d.tar"))
    dm = CurriculumDataModule(str(tmp_path / "train-*.tar"), str(tmp_path / "heldout-*.tar"), **kwargs)
    dm.trainer = lightning.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    dm.tokenizer = char_tokenizer("0123456789+=,:AQ")
    dm.setup("fit")
    return dm


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=5, max_size=5), st.sampled_from([0.0, 0.05, 0.3]))
def test_draw_frequencies_follow_one_minus_success_with_floor(tmp_path_factory, success, floor):
    dm = data_module(tmp_path_factory.mktemp("f"), n=5, prompts_per_iteration=1, floor=floor)
    dm.success = torch.tensor(success)
    weights = sampling_weights(dm.success, floor)
    if weights.sum() == 0:
        return  # every prompt solved and no floor: nothing to draw from (multinomial refuses too)
    draws = 3000
    counts = torch.zeros(5)
    for _ in range(draws):
        counts[dm.pool.keys.index(dm.draw().keys[0])] += 1
    expected = weights / weights.sum() * draws
    sigma = (expected * (1 - weights / weights.sum())).sqrt()
    assert ((counts - expected).abs() <= 5 * sigma + 1).all(), (counts, expected)


stages = st.lists(st.tuples(st.integers(1, 5), st.integers(0, 4)), min_size=1, max_size=3).map(
    lambda parts: (
        [Stage(until=(j + 1) * 3, min_difficulty=lo, max_difficulty=lo + span) for j, (lo, span) in enumerate(parts)]
        + [Stage()]
    )
)


@settings(max_examples=15, deadline=None)
@given(stages)
def test_stage_filters_never_emit_a_prompt_outside_the_stage(tmp_path_factory, curriculum):
    dm = data_module(tmp_path_factory.mktemp("s"), n=100, prompts_per_iteration=3, stages=curriculum)
    for iteration in range(12):
        stage = stage_at(curriculum, iteration)
        batch = dm.draw()
        assert all(stage.admits(d) for d in batch.difficulties), (stage, batch.difficulties)


def test_resumed_state_draws_exactly_the_uninterrupted_batches(tmp_path):
    def outcomes(keys):  # a fixed, key-dependent verdict, so success rates shape later draws
        return torch.tensor([[hash(k) % 3 == 0, hash(k) % 2 == 0] for k in keys])

    dm = data_module(tmp_path, prompts_per_iteration=4, stages=[Stage(until=3, max_difficulty=2), Stage()])
    drawn = []
    for i in range(8):
        if i == 4:
            torch.save({"dm": dm.state_dict()}, tmp_path / "mid.ckpt")
        batch = dm.draw()
        dm.record(batch.keys, outcomes(batch.keys))
        drawn.append(batch.keys)
    resumed = data_module(tmp_path, prompts_per_iteration=4, stages=[Stage(until=3, max_difficulty=2), Stage()])
    resumed.load_state_dict(torch.load(tmp_path / "mid.ckpt")["dm"])
    for i in range(4, 8):
        batch = resumed.draw()
        resumed.record(batch.keys, outcomes(batch.keys))
        assert batch.keys == drawn[i]
    assert torch.equal(resumed.success, dm.success) and resumed.success.max() > 0


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(out, format="PNG")
    return out.getvalue()


def test_bad_samples_are_skipped_and_counted_and_the_rest_load(tmp_path):
    good = json.dumps({"prompt": "Q:1+1=", "answer": "2", "difficulty": 1}).encode()
    (tmp_path / "a.tar").write_bytes(
        tar_bytes(
            {
                "ok1.json": good,
                "ok2.json": good,
                "ok2.png": png(),
                "nofield.json": json.dumps({"prompt": "Q:1+2="}).encode(),
                "empty.json": json.dumps({"prompt": "  ", "answer": "0", "difficulty": 1}).encode(),
                "latin1.json": '{"prompt": "Q:é", "answer": "1", "difficulty": 1}'.encode("latin-1"),
                "badimg.json": good,
                "badimg.png": b"\x89PNG not really",
            }
        )
    )
    write_shards(records(30), str(tmp_path / "b-%06d.tar.gz"), records_per_shard=30)
    whole = (tmp_path / "b-000000.tar.gz").read_bytes()
    (tmp_path / "b-000000.tar.gz").write_bytes(whole[: len(whole) // 2])  # truncated mid-stream
    flipped = bytearray(tar_bytes({"x.json": good, "y.json": good}))
    flipped[0:10] = bytes(b ^ 0xFF for b in flipped[0:10])  # the first member's header: its checksum no longer holds
    (tmp_path / "c.tar").write_bytes(bytes(flipped))

    pool = load_pool(sorted(str(p) for p in tmp_path.glob("*.tar*")))
    assert pool.skipped["missing_field"] == 1 and pool.skipped["empty_prompt"] == 1
    assert pool.skipped["undecodable_json"] == 1 and pool.skipped["bad_image"] == 1
    assert pool.skipped["corrupt_shard"] == 2  # the truncated one and the byte-flipped one
    assert 2 <= len(pool) < 2 + 30  # both good records of a.tar, and what came before the cut
    assert pool.images[pool.keys.index("a.tar:ok2")] and Image.open(
        io.BytesIO(pool.images[pool.keys.index("a.tar:ok2")][0])
    )


def test_a_set_with_no_usable_record_is_one_clear_error(tmp_path):
    (tmp_path / "x.tar").write_bytes(tar_bytes({"a.json": b'{"prompt": "Q:1+1="}', "b.json": b'{"text": 1}'}))
    with pytest.raises(K15Error, match="no usable RL prompt record in .*x.tar.*2 missing_field"):
        load_pool([str(tmp_path / "x.tar")])
    with pytest.raises(FileNotFoundError, match="no shards match"):
        shard_urls(str(tmp_path / "nothing-*.tar"))


def test_a_stage_smaller_than_an_iteration_is_a_start_up_error(tmp_path):
    # 40 prompts, 8 of each difficulty: a difficulty-1 stage cannot fill an iteration of 10
    with pytest.raises(K15Error, match=r"stages\[0\] .* admits 8 of the 40 usable prompts .* needs 10"):
        data_module(tmp_path, prompts_per_iteration=10, stages=[Stage(until=5, max_difficulty=1), Stage()])


def _record_on_rank(rank: int, folder: str, results) -> None:
    """Two iterations on two ranks: the first as it should go, then rank 1 loses an update."""
    from datetime import timedelta
    from pathlib import Path

    import torch.distributed as dist

    # a rendezvous file, not a port (no race with other tests); a lost peer fails in 2 min, not gloo's 30
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2, timeout=timedelta(minutes=2)
    )
    dm = data_module(Path(folder), prompts_per_iteration=2)
    for iteration in ("same", "diverged"):
        batch = dm.draw()
        if iteration == "diverged" and rank == 1:
            dm.success[0] += 0.5
        try:
            dm.record(batch.keys, torch.ones(len(batch), 4))
            results[(iteration, rank)] = "agree"
        except RuntimeError as error:
            results[(iteration, rank)] = str(error)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ranks_check_that_their_sampler_states_agree(tmp_path):
    import torch.multiprocessing as mp

    data_module(tmp_path)  # write the shards once
    results = mp.Manager().dict()
    mp.spawn(_record_on_rank, args=(str(tmp_path), results), nprocs=2)
    assert results[("same", 0)] == results[("same", 1)] == "agree"
    assert all("differ across ranks" in results[("diverged", rank)] for rank in (0, 1))
