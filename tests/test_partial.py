"""Partial rollouts on real engines: a trajectory generated in budgeted segments over several
iterations is the trajectory one uninterrupted generation makes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from k15.data.prompts import PromptBatch
from k15.errors import K15Error
from k15.models import Pretrained
from k15.reward import RewardModule
from k15.rollout import HFEngine, RolloutCallback, RolloutSampler, Sampling
from k15.rollout.sampler import LengthStage

PROMPTS = ["Q:65+57=", "Q:123+456=", "Q:7+8=", "Q:99999+1="]
NO_NEW_PROMPTS = PromptBatch([], [], [], [])


def synced_engine(tiny_dir, name: str):
    """(engine serving the tiny model, tokenizer, model, the PROMPTS as token ids)."""
    source = Pretrained(str(tiny_dir))
    tok, model = source.tokenizer(), source.model()
    if name == "hf":
        engine = HFEngine()
    else:
        from k15.rollout.vllm import VLLMEngine

        engine = VLLMEngine(max_model_len=128, kv_cache_gib=0.05, block_size=32)
    engine.sync(model)
    return engine, tok, model, [tok(p)["input_ids"] for p in PROMPTS]


@pytest.mark.parametrize("engine_name", ["hf", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.slow])])
def test_segmented_greedy_equals_unsegmented_greedy(tiny_dir, engine_name):
    engine, tok, model, prompt_ids = synced_engine(tiny_dir, engine_name)
    whole = [g[0].token_ids for g in engine.generate(prompt_ids, Sampling(1, 20, temperature=0.0))]

    sampler = RolloutSampler(
        engine, samples_per_prompt=1, max_new_tokens=20, segment_tokens=3, segments_in_loss="newest", temperature=0.0
    )
    batch = PromptBatch(prompt_ids, PROMPTS, ["0"] * len(PROMPTS), [1] * len(PROMPTS))
    segmented, iterations = {}, 0
    while iterations == 0 or len(sampler.buffer):
        engine.sync(model)  # what every iteration does; the weights are unchanged here
        rollout = sampler.rollout(batch if iterations == 0 else NO_NEW_PROMPTS, tok, RewardModule(), iterations)
        if rollout is not None:
            generated = rollout.versions >= 0
            for n, prompt in enumerate(rollout.prompts):
                segmented[prompt] = rollout.input_ids[n][generated[n]].tolist()
                assert torch.equal(
                    rollout.loss_mask[n].bool(), rollout.versions[n] == iterations
                )  # newest segment only
        iterations += 1
    assert [segmented[p] for p in PROMPTS] == whole
    longest = max(len(t) for t in whole)
    assert iterations == -(-longest // 3)  # ⌈longest / segment_tokens⌉ iterations, each ≤ 3 new tokens
    assert longest > 6  # the random tiny model rambles: several segments were really stitched


@pytest.mark.parametrize("engine_name", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_extra_stop_tokens_end_a_response_like_eos(tiny_dir, engine_name):
    engine, _, model, prompts = synced_engine(tiny_dir, engine_name)
    free = [g[0].token_ids for g in engine.generate(prompts, Sampling(1, 20, temperature=0.0))]
    stop = free[0][3]  # a token greedy decoding produces for the first prompt
    stopped = engine.generate(prompts, Sampling(1, 20, temperature=0.0, stop_token_ids=(stop,)))
    for whole, (completion,) in zip(free, stopped, strict=True):
        cut = whole.index(stop) + 1 if stop in whole else len(whole)
        assert completion.token_ids == whole[:cut]
        assert (completion.finish_reason == "stop") == (stop in whole or whole[-1] == model.config.eos_token_id)


@pytest.mark.parametrize("engine_name", ["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def test_banned_tokens_are_never_sampled(tiny_dir, engine_name):
    engine, _, _, prompts = synced_engine(tiny_dir, engine_name)
    free = [c.token_ids for g in engine.generate(prompts, Sampling(4, 20, temperature=1.0, seed=0)) for c in g]
    banned = tuple({t for tokens in free for t in tokens[:-1]})[:3]  # tokens this model does sample
    assert banned
    again = [
        c.token_ids
        for g in engine.generate(prompts, Sampling(4, 20, temperature=1.0, seed=0, banned_token_ids=banned))
        for c in g
    ]
    assert not {t for tokens in again for t in tokens} & set(banned)


def test_each_rank_keeps_its_own_buffer_in_the_checkpoint_and_old_checkpoints_load():
    """``buffers`` holds every rank's replay buffer (one here); a checkpoint written before
    per-rank state (``buffer``: one process's) still resumes in one process."""
    from k15.rollout.trajectory import Group, Segment, Trajectory

    saved = RolloutCallback(HFEngine(), max_new_tokens=8)
    saved.buffer.put([Group([1, 5, 6], "2+3=", "5", [Trajectory([Segment(0, [7, 8], [-0.5, -1.0])])], key="k")])
    state = saved.state_dict()
    assert len(state["buffers"]) == 1
    old = {"buffer": state["buffers"][0], "reasons_seen": {}}
    for checkpoint in (state, old):
        loaded = RolloutCallback(HFEngine(), max_new_tokens=8)
        loaded.load_state_dict(checkpoint)
        assert loaded.buffer.state_dict() == saved.buffer.state_dict() and len(loaded.buffer) == 1
    with pytest.raises(K15Error, match="2 process"):
        RolloutCallback(HFEngine(), max_new_tokens=8).load_state_dict({"buffers": [state["buffers"][0]] * 2})


def test_length_curriculum_raises_the_cap_stage_by_stage(tiny_dir):
    """A random policy rarely stops: under a 6-token cap every response ends at 6 ("max_length"),
    and once the next stage starts the same prompts may run to 12."""
    engine, tok, model, prompt_ids = synced_engine(tiny_dir, "hf")
    sampler = RolloutSampler(
        engine,
        samples_per_prompt=2,
        max_new_tokens=12,
        length_stages=[LengthStage(6, until=1), LengthStage(12)],
        temperature=1.0,
    )
    batch = PromptBatch(prompt_ids, PROMPTS, ["0"] * len(PROMPTS), [1] * len(PROMPTS))
    first, second = (sampler.rollout(batch, tok, RewardModule(), i) for i in (0, 1))
    assert first.completion_lengths.max() <= 6 < second.completion_lengths.max() <= 12
    assert all(r in ("stop", "max_length") for r in first.finish_reasons)
    assert first.finish_reasons.count("max_length") == int((first.completion_lengths == 6).sum())


@given(caps=st.lists(st.integers(1, 100), min_size=1, max_size=5), gaps=st.lists(st.integers(1, 9), max_size=5))
@settings(max_examples=50, deadline=None)
def test_response_cap_follows_the_stages(caps, gaps):
    caps = sorted(caps)
    untils = [sum(gaps[: n + 1]) for n in range(min(len(caps) - 1, len(gaps)))]
    caps = caps[: len(untils) + 1]
    stages = [LengthStage(c, u) for c, u in zip(caps, [*untils, None], strict=True)]
    sampler = RolloutSampler(HFEngine(), max_new_tokens=caps[-1], length_stages=stages)
    for iteration in range(sum(gaps) + 2):
        stage = next(n for n, u in enumerate([*untils, None]) if u is None or iteration < u)
        assert sampler.response_cap(iteration) == caps[stage]


@pytest.mark.parametrize(
    "stages",
    [
        [LengthStage(8, until=2), LengthStage(4)],  # the cap falls
        [LengthStage(8, until=2), LengthStage(16, until=5)],  # the last stage ends
        [LengthStage(8, until=4), LengthStage(12, until=2), LengthStage(16)],  # until falls
        [LengthStage(8, until=2), LengthStage(32)],  # past max_new_tokens
    ],
)
def test_bad_length_stages_name_the_key(stages):
    with pytest.raises(ValueError, match="rollout.length_stages"):
        RolloutSampler(HFEngine(), max_new_tokens=16, length_stages=stages)
