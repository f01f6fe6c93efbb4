"""Partial rollouts on real engines: a trajectory generated in budgeted segments over several
iterations is the trajectory one uninterrupted generation makes."""

import pytest
import torch

from k15.data.prompts import PromptBatch
from k15.models import Pretrained
from k15.reward import RewardModule
from k15.rollout import HFEngine, RolloutCallback, Sampling

PROMPTS = ["Q:65+57=", "Q:123+456=", "Q:7+8=", "Q:99999+1="]
NO_NEW_PROMPTS = PromptBatch([], [], [], [])


def make_engine(name: str):
    if name == "hf":
        return HFEngine()
    from k15.rollout.vllm import VLLMEngine

    return VLLMEngine(max_model_len=128, kv_cache_gib=0.05, block_size=32)


@pytest.mark.parametrize("engine_name", ["hf", "vllm"])
def test_segmented_greedy_equals_unsegmented_greedy(tiny_dir, engine_name):
    source = Pretrained(str(tiny_dir))
    tok, model = source.tokenizer(), source.model()
    engine = make_engine(engine_name)
    engine.sync(model)
    prompt_ids = [tok(p)["input_ids"] for p in PROMPTS]
    whole = [g[0].token_ids for g in engine.generate(prompt_ids, Sampling(1, 20, temperature=0.0))]

    callback = RolloutCallback(engine, samples_per_prompt=1, max_new_tokens=20, segment_tokens=3, segments_in_loss="newest", temperature=0.0)
    batch = PromptBatch(prompt_ids, PROMPTS, ["0"] * len(PROMPTS), [1] * len(PROMPTS))
    segmented, iterations = {}, 0
    while iterations == 0 or len(callback.buffer):
        engine.sync(model)  # what every iteration does; the weights are unchanged here
        rollout = callback.rollout(batch if iterations == 0 else NO_NEW_PROMPTS, tok, RewardModule(), iterations)
        if rollout is not None:
            generated = rollout.versions >= 0
            for n, prompt in enumerate(rollout.prompts):
                segmented[prompt] = rollout.input_ids[n][generated[n]].tolist()
                assert torch.equal(rollout.loss_mask[n].bool(), rollout.versions[n] == iterations)  # newest segment only
        iterations += 1
    assert [segmented[p] for p in PROMPTS] == whole
    longest = max(len(t) for t in whole)
    assert iterations == -(-longest // 3)  # ⌈longest / segment_tokens⌉ iterations, each ≤ 3 new tokens
    assert longest > 6  # the random tiny model rambles: several segments were really stitched
