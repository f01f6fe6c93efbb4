"""HF engine, trajectory packing, and the reference scorer on a real tiny Qwen2."""

import torch

from k15.logprobs import token_logprobs
from k15.models import Pretrained
from k15.reference import ReferenceModule
from k15.rollout import HFEngine, Sampling
from k15.rollout.batch import pack_trajectories
from k15.rollout.engine import Completion
from k15.rollout.hf import cut_at_stop
from k15.rollout.trajectory import Group, Segment, Trajectory


def engine_and_prompts(tiny_dir):
    source = Pretrained(str(tiny_dir))
    tok, model = source.tokenizer(), source.model()
    engine = HFEngine()
    engine.sync(model)
    return engine, model, [tok("Q:1+2=")["input_ids"], tok("Q:12+345=")["input_ids"]]


def test_k_completions_per_prompt_seeded_and_greedy_deterministic(tiny_dir):
    engine, model, prompts = engine_and_prompts(tiny_dir)
    sampled = engine.generate(prompts, Sampling(samples_per_prompt=3, max_new_tokens=12, seed=7))
    assert [len(group) for group in sampled] == [3, 3]
    again = engine.generate(prompts, Sampling(samples_per_prompt=3, max_new_tokens=12, seed=7))
    assert [[c.token_ids for c in g] for g in sampled] == [[c.token_ids for c in g] for g in again]
    for c in (c for g in sampled for c in g):
        assert 1 <= len(c.token_ids) <= 12
        assert (c.finish_reason == "stop") == (c.token_ids[-1] == model.config.eos_token_id)
    greedy = Sampling(samples_per_prompt=1, max_new_tokens=12, temperature=0.0)
    first, second = engine.generate(prompts, greedy), engine.generate(prompts, greedy)
    assert [g[0].token_ids for g in first] == [g[0].token_ids for g in second]


def test_greedy_matches_argmax_of_the_model(tiny_dir):
    engine, model, prompts = engine_and_prompts(tiny_dir)
    completion = engine.generate(prompts[:1], Sampling(1, 6, temperature=0.0))[0][0].token_ids
    ids = list(prompts[0])
    for token in completion:
        assert model(torch.tensor([ids])).logits[0, -1].argmax().item() == token
        ids.append(token)


def test_cut_at_stop_keeps_the_stop_token():
    assert cut_at_stop([5, 6, 2, 7], {2}) == Completion([5, 6, 2], "stop")
    assert cut_at_stop([5, 6], {2}) == Completion([5, 6], "length")


def test_pack_trajectories_places_completion_tokens_versions_and_logprobs():
    groups = [
        Group([1, 10, 11], "a", "1", [Trajectory([Segment(0, [20, 2], [-0.1, -0.2])]), Trajectory([Segment(0, [21], [-0.3]), Segment(1, [22, 23], [-0.4, -0.5])])]),
        Group([1, 12], "b", "2", [Trajectory([Segment(1, [24, 2], [-0.6, -0.7])])] * 2),
    ]
    input_ids, attention_mask, versions, logprobs = pack_trajectories(groups, pad_id=0)
    assert input_ids.shape == (4, 6)
    assert input_ids[1].tolist() == [1, 10, 11, 21, 22, 23]
    assert versions[0].tolist() == [-1, -1, -1, 0, 0, -1]
    assert versions[1].tolist() == [-1, -1, -1, 0, 1, 1]
    assert attention_mask[2].tolist() == [1, 1, 1, 1, 0, 0]
    assert versions[2].tolist() == [-1, -1, 1, 1, -1, -1]
    torch.testing.assert_close(logprobs[1], torch.tensor([0, 0, 0, -0.3, -0.4, -0.5]))
    groups[0].trajectories[0].segments[0].logprobs = None  # an engine that reports none
    assert pack_trajectories(groups, pad_id=0)[3] is None


def test_trajectory_truncates_across_segments():
    trajectory = Trajectory([Segment(0, [1, 2, 3], [-1.0] * 3), Segment(1, [4, 5], [-2.0] * 2), Segment(2, [6], [-3.0])])
    trajectory.truncate(4)
    assert trajectory.token_ids == [1, 2, 3, 4] and trajectory.versions == [0, 0, 0, 1] and trajectory.logprobs == [-1.0] * 3 + [-2.0]


def test_reference_modes(tiny_dir):
    source = Pretrained(str(tiny_dir))
    policy = source.model()
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    initial, iteration = ReferenceModule("initial"), ReferenceModule("iteration")
    initial.attach(policy)
    iteration.attach(policy)
    before = token_logprobs(policy, ids, mask).detach()
    with torch.no_grad():
        policy.model.embed_tokens.weight.mul_(1.5)  # the policy moves on
    after = token_logprobs(policy, ids, mask).detach()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(initial(policy, ids, mask), before)  # still π at the start
    torch.testing.assert_close(iteration(policy, ids, mask), after)  # π_θi = current weights
    assert before[0, 0] == 0 and (before[0, 1:] < 0).all()


def test_checkpoint_generation_settings_do_not_leak_into_rollouts(tiny_dir):
    """A repetition penalty in the checkpoint's generation_config would make rollouts samples of
    something other than π_θ; the engine must ignore it."""
    engine, model, prompts = engine_and_prompts(tiny_dir)
    greedy = Sampling(1, 10, temperature=0.0)
    plain = engine.generate(prompts, greedy)
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.top_k = 1
    assert [g[0].token_ids for g in engine.generate(prompts, greedy)] == [g[0].token_ids for g in plain]


def test_repeating_trajectory_is_cut_marked_and_penalised():
    from k15.reward import RepetitionPenalty, Responses, RewardModule
    from k15.rollout import RolloutCallback
    from k15.rollout.repetition import RepeatDetector

    callback = RolloutCallback(engine=HFEngine(), max_new_tokens=64, repeat_detector=RepeatDetector(max_period=4, min_repeats=3, min_span=6))
    # the loop begins in one segment and becomes certain in the next
    looping = Trajectory([Segment(0, [7, 8, 9, 5, 6], [-0.5] * 5), Segment(1, [5, 6] * 9, [-0.5] * 18)])
    assert callback.finish_reason(looping, Completion([5, 6] * 9, "length")) == "repeat"
    assert looping.token_ids == [7, 8, 9, 5, 6, 5, 6, 5, 6] and len(looping.logprobs) == 9
    clean = Trajectory([Segment(0, [7, 8, 9, 2])])
    assert callback.finish_reason(clean, Completion([7, 8, 9, 2], "stop")) == "stop" and len(clean) == 4
    going = Trajectory([Segment(0, [7, 8, 9])])
    assert callback.finish_reason(going, Completion([7, 8, 9], "length")) is None  # under the cap: continues

    responses = Responses(["Q:1+2="] * 2, ["A:3", "A:3"], ["3", "3"], [[1] * 4, [2] * 9], ["stop", "repeat"], k=2, iteration=0)
    rewards = RewardModule(shaping=[RepetitionPenalty(weight=0.5)])(responses)
    assert rewards.total.tolist() == [[1.0, 0.5]] and rewards.correct.tolist() == [[1.0, 1.0]]
    assert rewards.reasons["repetition"] == ["clean", "looped"]
