"""Padding-free packing: micro-batches by a token budget, packed rows attend within their own
documents exactly, and the k15 attention equals sdpa everywhere else."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Qwen2Config, Qwen2ForCausalLM

from k15.generation import Request, Sampling, hf_sample
from k15.logprobs import token_logprobs
from k15.losses import GRPOLoss, KimiLoss
from k15.models import Pretrained
from k15.packing import (
    PACKED_SDPA,
    attend_within_documents,
    document_bounds,
    pack_rows,
    token_budget_micro_batches,
    unpack,
)

lengths_and_budget = st.tuples(st.lists(st.integers(1, 60), min_size=1, max_size=40), st.integers(1, 400))


@given(lengths_and_budget)
def test_micro_batches_partition_the_rows_within_budget(case):
    lengths, budget = torch.tensor(case[0]), case[1]
    rows = torch.randperm(len(lengths))[: max(1, len(lengths) // 2 + 1)]
    batches = token_budget_micro_batches(lengths, rows, budget)
    assert sorted(torch.cat(batches).tolist()) == sorted(rows.tolist())
    for mb in batches:
        assert len(mb) == 1 or int(lengths[mb].sum()) <= budget
    # first fit decreasing: no two micro-batches could have been one
    sizes = sorted(int(lengths[mb].sum()) for mb in batches)
    assert len(sizes) < 2 or sizes[0] + sizes[1] > budget
    assert token_budget_micro_batches(lengths, rows, None)[0].tolist() == rows.tolist()


@settings(deadline=None)
@given(lengths_and_budget, st.integers(0, 2**31 - 1))
def test_micro_batch_losses_weighted_by_share_sum_to_the_whole_step_loss(case, seed):
    lengths, budget = torch.tensor(case[0]), case[1]
    n, width = len(lengths), int(lengths.max())
    g = torch.Generator().manual_seed(seed)
    logp, ref_logp = -torch.rand(n, width, generator=g), -torch.rand(n, width, generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float() * (torch.rand(n, width, generator=g) > 0.3)
    advantages = torch.randn(n, generator=g)
    rows = torch.arange(n)
    for loss in (KimiLoss(tau=0.5), GRPOLoss()):
        whole = loss(logp, ref_logp, mask, advantages)
        parts = sum(
            loss(
                logp[mb, : int(lengths[mb].max())],
                ref_logp[mb, : int(lengths[mb].max())],
                mask[mb, : int(lengths[mb].max())],
                advantages[mb],
            )
            * loss.micro_batch_weight(mask[mb], mask[rows])
            for mb in token_budget_micro_batches(lengths, rows, budget)
        )
        torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5)


def test_trimming_right_padding_leaves_log_probs_unchanged(tiny_dir):
    model = Pretrained(str(tiny_dir)).model()
    ids = torch.randint(0, 16, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    full = token_logprobs(model, ids, mask)
    for row, length in ((1, 7), (2, 4)):
        trimmed = token_logprobs(model, ids[row : row + 1, :length], mask[row : row + 1, :length])
        torch.testing.assert_close(trimmed[0], full[row, :length], atol=1e-5, rtol=0)


@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.booleans())
def test_pack_and_unpack_round_trip_and_positions_restart_per_row(lengths, left_padded):
    width = max(lengths) + 2
    ids = torch.randint(0, 50, (len(lengths), width))
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    if left_padded:
        mask = mask.flip(1)
    packed = pack_rows(ids, mask)
    assert packed.input_ids.shape == (1, sum(lengths))
    assert packed.position_ids[0].tolist() == [t for n in lengths for t in range(n)]
    assert [b - a for a, b in document_bounds(packed.position_ids)] == lengths
    torch.testing.assert_close(unpack(packed.input_ids, packed.kept), ids * mask)


def qwen2(implementation: str) -> Qwen2ForCausalLM:
    """Two layers, grouped-query attention (4 heads, 2 KV heads), fp64: exactness is visible."""
    config = Qwen2Config(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        attn_implementation=implementation,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).double().eval()


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_a_packed_row_equals_each_document_alone(implementation):
    """k15's attention for sdpa models, transformers' block mask for eager: documents never mix."""
    model = qwen2(implementation)
    attend_within_documents(model)
    assert model.config._attn_implementation == (PACKED_SDPA if implementation == "sdpa" else "eager")
    documents = [torch.randint(0, 40, (n,), generator=torch.Generator().manual_seed(n)) for n in (7, 1, 12, 3)]
    positions = torch.cat([torch.arange(len(d)) for d in documents])[None]
    packed = model(input_ids=torch.cat(documents)[None], position_ids=positions, use_cache=False).logits[0]
    alone = torch.cat([model(input_ids=d[None], use_cache=False).logits[0] for d in documents])
    # eager takes its softmax in fp32 whatever the model's dtype: exact up to fp32 rounding
    tolerance = 1e-6 if implementation == "eager" else 1e-12
    torch.testing.assert_close(packed, alone, rtol=tolerance, atol=tolerance)


def test_the_packed_attention_equals_sdpa_on_padded_rows_and_in_generation():
    """The switch is for good (activation checkpointing recomputes outside any scope), so on
    everything but a packed row it must be sdpa itself: left-padded batches, cached generation."""
    sdpa = qwen2("sdpa")
    packed = copy.deepcopy(sdpa)
    attend_within_documents(packed)
    ids = torch.randint(0, 40, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, :1] = 0
    torch.testing.assert_close(
        packed(input_ids=ids, attention_mask=mask).logits,
        sdpa(input_ids=ids, attention_mask=mask).logits,
        rtol=0,
        atol=0,
    )
    requests = [Request([5, 6, 7], 1, 8), Request([9, 3, 2, 8, 1], 1, 8)]
    greedy = Sampling(temperature=0.0)
    assert [c[0].token_ids for c in hf_sample(packed, requests, greedy)] == [
        c[0].token_ids for c in hf_sample(sdpa, requests, greedy)
    ]


def test_a_vision_model_packs_rows_with_their_images_in_order():
    """LLaVA splices image features into the image tokens in order: packed rows keep that order."""
    from PIL import Image

    from k15.logprobs import token_scores
    from k15.models import TinyVLM

    source = TinyVLM("abc+=0123456789 ", image_size=16, patch_size=8, vision_hidden_size=16, hidden_size=16)
    model, processor = source.model().double(), source.processor()
    images = [Image.new("RGB", (16, 16), colour) for colour in ("white", "navy")]
    encoded = processor(text=["<image>a+b=12", "<image>c="], images=images, return_tensors="pt", padding=True)
    ids, mask, pixels = encoded["input_ids"], encoded["attention_mask"], encoded["pixel_values"].double()
    both = token_scores(model, ids, mask, pixel_values=pixels).logp
    for row in range(2):
        kept = mask[row].bool()
        alone = token_scores(
            model, ids[row : row + 1, kept], mask[row : row + 1, kept], pixel_values=pixels[row : row + 1]
        )
        torch.testing.assert_close(both[row, kept], alone.logp[0], rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_packed_rows_equal_each_document_alone_on_a_gpu():
    """CUDA sdpa (flash/efficient kernels, is_causal per document) in bf16: packed == alone."""
    model = qwen2("sdpa").to("cuda", torch.bfloat16)
    attend_within_documents(model)
    documents = [torch.randint(0, 40, (n,), device="cuda") for n in (37, 5, 60)]
    positions = torch.cat([torch.arange(len(d), device="cuda") for d in documents])[None]
    packed = model(input_ids=torch.cat(documents)[None], position_ids=positions, use_cache=False).logits[0]
    alone = torch.cat([model(input_ids=d[None], use_cache=False).logits[0] for d in documents])
    torch.testing.assert_close(packed.float(), alone.float(), rtol=2e-2, atol=2e-2)
