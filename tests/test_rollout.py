"""HF engine, trajectory packing, and the reference scorer on a real tiny Qwen2."""

import math
from collections import Counter

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from k15.generation import Completion, Request, SeededSampling, cut_at_stop, hf_sample, inverse_cdf_sample
from k15.logprobs import token_logprobs
from k15.models import Pretrained
from k15.reference import ReferenceModule
from k15.rollout import HFEngine, Sampling
from k15.rollout.batch import pack_trajectories
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


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.5])
def test_sampled_tokens_come_with_their_log_probs_at_the_sampling_temperature(tiny_dir, temperature):
    """log μ(y_t) of each drawn token, as the trainer scores it at τ: the off-policy weights' denominator
    (greedy decoding reports none)."""
    engine, model, prompts = engine_and_prompts(tiny_dir)
    sampling = Sampling(samples_per_prompt=3, max_new_tokens=12, temperature=temperature, seed=1)
    for prompt, group in zip(prompts, engine.generate(prompts, sampling), strict=True):
        for completion in group:
            ids = torch.tensor([prompt + completion.token_ids])
            trainer_logp = token_logprobs(model, ids, torch.ones_like(ids), temperature)[0, len(prompt) :]
            torch.testing.assert_close(torch.tensor(completion.logprobs), trainer_logp, atol=1e-5, rtol=0)
    greedy = engine.generate(prompts, Sampling(samples_per_prompt=1, max_new_tokens=4, temperature=0.0))
    assert all(c.logprobs is None for group in greedy for c in group)


def test_greedy_matches_argmax_of_the_model(tiny_dir):
    engine, model, prompts = engine_and_prompts(tiny_dir)
    completion = engine.generate(prompts[:1], Sampling(1, 6, temperature=0.0))[0][0].token_ids
    ids = list(prompts[0])
    for token in completion:
        assert model(torch.tensor([ids])).logits[0, -1].argmax().item() == token
        ids.append(token)


def tokens(groups):
    return [[c.token_ids for c in group] for group in groups]


def test_a_sample_depends_on_its_seed_only_not_on_the_batch_or_chunking(tiny_dir):
    """Row j of a call uses seed + j: the same request gets the same completions alone, after other
    requests (the seed shifted by their sample count so its rows keep their seeds), and in any chunking."""
    engine, model, prompts = engine_and_prompts(tiny_dir)
    target = Request(prompts[0], samples=4, max_new_tokens=16)
    before = [
        Request(prompts[1], samples=3, max_new_tokens=24),
        Request(prompts[0] + prompts[1], samples=2, max_new_tokens=5),
    ]
    after = Request(prompts[1][:3], samples=2, max_new_tokens=8)
    sampling = Sampling(temperature=1.0, seed=100)
    alone = tokens(hf_sample(model, [target], sampling))[0]
    assert len(set(map(tuple, alone))) > 1 and max(len(t) for t in alone) > 3  # long enough to tell draws apart
    shifted = Sampling(temperature=1.0, seed=95)  # 5 samples before the target: its rows are seeds 100..103 again
    for max_sequences in (512, 1, 3, 6):  # 3 and 6 split the target's rows across chunks
        mixed = tokens(hf_sample(model, [*before, target, after], shifted, max_sequences))
        assert mixed[2] == alone, max_sequences
        assert mixed[0] == tokens(hf_sample(model, before[:1], shifted))[0]  # the others are reproducible too
    assert tokens(hf_sample(model, [target], sampling, max_sequences=1))[0] == alone
    # and with top-p, which sorts each row's probabilities
    nucleus = Sampling(temperature=1.0, top_p=0.8, seed=100)
    alone = tokens(hf_sample(model, [target], nucleus))[0]
    assert (
        tokens(hf_sample(model, [*before, target], Sampling(temperature=1.0, top_p=0.8, seed=95), max_sequences=2))[2]
        == alone
    )


def test_k_samples_differ_seeds_reproduce_and_the_global_rng_is_untouched(tiny_dir):
    engine, model, prompts = engine_and_prompts(tiny_dir)

    def samples(seed):
        return tokens(
            engine.generate(prompts[:1], Sampling(samples_per_prompt=8, max_new_tokens=12, temperature=1.0, seed=seed))
        )[0]

    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first = samples(0)
    assert len(set(map(tuple, first))) > 1  # each row its own seed
    assert samples(0) == first
    assert samples(1) != first
    assert samples(1)[:7] == first[1:]  # seed 1's row j is seed 0's row j + 1
    unseeded = samples(None), samples(None)  # fresh seeds every call
    assert unseeded[0] != unseeded[1] and unseeded[0] != first
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_banned_tokens_are_never_sampled(tiny_dir, top_p):
    engine, model, prompts = engine_and_prompts(tiny_dir)
    sampling = Sampling(samples_per_prompt=16, max_new_tokens=12, temperature=1.0, top_p=top_p, seed=0)
    counts = Counter(t for group in tokens(engine.generate(prompts, sampling)) for row in group for t in row)
    banned = counts.most_common(1)[0][0]  # the most sampled token, so the ban has something to remove
    first = model(torch.tensor([prompts[0]])).logits[0, -1].argmax().item()  # and the most likely first token
    ban = Sampling(
        samples_per_prompt=16, max_new_tokens=12, temperature=1.0, top_p=top_p, seed=0, banned_token_ids=(banned, first)
    )
    assert not {banned, first} & {t for group in tokens(engine.generate(prompts, ban)) for row in group for t in row}


def nucleus(probs: list[float], top_p: float) -> set[int]:
    """Reference top-p in float64: most likely first, while the mass before a token is < top_p."""
    kept, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        if mass >= top_p or probs[i] == 0:
            break
        kept.add(i)
        mass += probs[i]
    return kept


weights = st.lists(st.sampled_from([0.0, 0.001, 0.01, 0.1, 0.3, 1.0, 2.0, 7.0]), min_size=1, max_size=12).filter(any)


@settings(max_examples=150, deadline=None)
@given(weights=weights, top_p=st.floats(0.05, 1.0), u=st.floats(0.0, 1.0, exclude_max=True))
def test_inverse_cdf_sample_takes_a_token_of_the_nucleus(weights, top_p, u):
    probs = [w / sum(weights) for w in weights]
    sorted_probs = sorted(probs, reverse=True)
    assume(all(abs(sum(sorted_probs[:k]) - top_p) > 1e-5 for k in range(len(probs))))  # no float32 tie at the boundary
    token, logp = inverse_cdf_sample(torch.tensor([probs]), torch.tensor([u]), top_p)
    token = token.item()
    kept = nucleus(probs, top_p)
    assert token in kept
    # the log-prob of the renormalised nucleus it was drawn from, log(p_k / M)
    assert math.isclose(logp.item(), math.log(probs[token] / sum(probs[i] for i in kept)), rel_tol=1e-5, abs_tol=1e-6)
    # a one-hot distribution gives its token whatever the uniform and top-p
    assert inverse_cdf_sample(torch.eye(len(probs))[[token]], torch.tensor([u]), top_p)[0].item() == token


@settings(max_examples=60, deadline=None)
@given(weights=weights, top_p=st.floats(0.05, 1.0))
def test_inverse_cdf_sample_with_evenly_spread_uniforms_counts_the_nucleus_probabilities(weights, top_p):
    """N uniforms (i + ½)/N hit token k about N·p_k/M times (M: nucleus mass): ±1, plus float slack."""
    probs = [w / sum(weights) for w in weights]
    sorted_probs = sorted(probs, reverse=True)
    assume(all(abs(sum(sorted_probs[:k]) - top_p) > 1e-5 for k in range(len(probs))))
    n = 2000
    uniforms = (torch.arange(n) + 0.5) / n
    chosen, _ = inverse_cdf_sample(torch.tensor([probs]).expand(n, -1), uniforms, top_p)
    counts = torch.bincount(chosen, minlength=len(probs)).tolist()
    kept = nucleus(probs, top_p)
    mass = sum(probs[i] for i in kept)
    for k, count in enumerate(counts):
        expected = n * probs[k] / mass if k in kept else 0
        assert abs(count - expected) <= 1.1, (k, count, expected)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.5, 1.0), (2.0, 0.8)])
def test_seeded_sampling_matches_softmax_over_temperature_in_the_nucleus(temperature, top_p):
    """Random uniforms through the logits processor: frequencies of softmax(logits / T), restricted to the nucleus."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -float("inf")])  # the last one banned
    n = 40_000
    processor = SeededSampling(
        torch.rand(n, 1, generator=torch.Generator().manual_seed(0)),
        prompt_width=3,
        temperature=temperature,
        top_p=top_p,
    )
    scores = processor(torch.zeros(n, 3, dtype=torch.long), logits.expand(n, -1).clone())
    assert ((scores == 0).sum(-1) == 1).all() and ((scores == 0) | (scores == -float("inf"))).all()  # one token left
    frequencies = torch.bincount(scores.argmax(-1), minlength=len(logits)).double() / n
    probs = torch.softmax(logits.double() / temperature, -1).tolist()
    kept = nucleus(probs, top_p)
    mass = sum(probs[i] for i in kept)
    expected = [probs[k] / mass if k in kept else 0.0 for k in range(len(probs))]
    for k, (f, p) in enumerate(zip(frequencies.tolist(), expected, strict=True)):
        assert abs(f - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-9, (k, f, p)  # within 5 σ


def test_cut_at_stop_keeps_the_stop_token():
    assert cut_at_stop([5, 6, 2, 7], {2}) == Completion([5, 6, 2], "stop")
    assert cut_at_stop([5, 6], {2}) == Completion([5, 6], "length")


def test_pack_trajectories_places_completion_tokens_versions_and_logprobs():
    groups = [
        Group(
            [1, 10, 11],
            "a",
            "1",
            [
                Trajectory([Segment(0, [20, 2], [-0.1, -0.2])]),
                Trajectory([Segment(0, [21], [-0.3]), Segment(1, [22, 23], [-0.4, -0.5])]),
            ],
        ),
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
    trajectory = Trajectory(
        [Segment(0, [1, 2, 3], [-1.0] * 3), Segment(1, [4, 5], [-2.0] * 2), Segment(2, [6], [-3.0])]
    )
    trajectory.truncate(4)
    assert (
        trajectory.token_ids == [1, 2, 3, 4]
        and trajectory.versions == [0, 0, 0, 1]
        and trajectory.logprobs == [-1.0] * 3 + [-2.0]
    )


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
    from k15.rollout import RolloutSampler
    from k15.rollout.repetition import RepeatDetector

    sampler = RolloutSampler(
        engine=HFEngine(), max_new_tokens=64, repeat_detector=RepeatDetector(max_period=4, min_repeats=3, min_span=6)
    )
    # the loop begins in one segment and becomes certain in the next
    looping = Trajectory([Segment(0, [7, 8, 9, 5, 6], [-0.5] * 5), Segment(1, [5, 6] * 9, [-0.5] * 18)])
    assert sampler.finish_reason(looping, Completion([5, 6] * 9, "length")) == "repeat"
    assert looping.token_ids == [7, 8, 9, 5, 6, 5, 6, 5, 6] and len(looping.logprobs) == 9
    clean = Trajectory([Segment(0, [7, 8, 9, 2])])
    assert sampler.finish_reason(clean, Completion([7, 8, 9, 2], "stop")) == "stop" and len(clean) == 4
    going = Trajectory([Segment(0, [7, 8, 9])])
    assert sampler.finish_reason(going, Completion([7, 8, 9], "length")) is None  # under the cap: continues

    responses = Responses(
        ["Q:1+2="] * 2, ["A:3", "A:3"], ["3", "3"], [[1] * 4, [2] * 9], ["stop", "repeat"], k=2, iteration=0
    )
    rewards = RewardModule(shaping=[RepetitionPenalty(weight=0.5)])(responses)
    assert rewards.total.tolist() == [[1.0, 0.5]] and rewards.correct.tolist() == [[1.0, 1.0]]
    assert rewards.reasons["repetition"] == ["clean", "looped"]
