"""Chunked log-probs and entropies equal the naive [N, T, V] computation, values and gradients."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from k15.data.arithmetic import ALPHABET
from k15.language_module import checkpoint_decoder_layers
from k15.logprobs import ChunkedHeadScores, token_scores
from k15.models import TinyQwen2, TinyVLM

SHAPE = dict(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)


def tiny(tied: bool) -> torch.nn.Module:
    model = TinyQwen2(ALPHABET, **SHAPE).model().double()
    if not tied:  # an untied head of its own
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.5)
    return model


MODELS = {True: tiny(True), False: tiny(False)}


def naive(model, ids, mask, temperature):
    """The textbook path: all logits at once, log-softmax, gather; H = −Σ p log p."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float() / temperature
    log_p = logits.log_softmax(-1)
    kept = mask[:, 1:].float()
    logp = log_p.gather(-1, ids[:, 1:, None]).squeeze(-1) * kept
    entropy = -(log_p.exp() * log_p).sum(-1) * kept
    return F.pad(logp, (1, 0)), F.pad(entropy, (1, 0))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(b.abs().max())))


def gradients(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@settings(max_examples=40, deadline=None)
@given(
    tied=st.booleans(),
    rows=st.integers(1, 3),
    width=st.integers(2, 10),
    data=st.data(),
    chunk=st.integers(1, 40),
    temperature=st.sampled_from([1.0, 0.6, 1.7]),
    entropy_weight=st.floats(-1, 1),
)
def test_chunked_scores_and_gradients_equal_the_naive_path(tied, rows, width, data, chunk, temperature, entropy_weight):
    model = MODELS[tied]
    ids = torch.randint(4, len(ALPHABET) + 4, (rows, width), generator=torch.Generator().manual_seed(width))
    lengths = data.draw(st.lists(st.integers(1, width), min_size=rows, max_size=rows))
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()  # right padding
    weights = torch.randn(rows, width, generator=torch.Generator().manual_seed(rows))

    ours = token_scores(model, ids, mask, temperature, chunk)
    reference = naive(model, ids, mask, temperature)
    for got, want in zip(ours, reference, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    grad_ours = gradients(model, (ours.logp * weights).sum() + entropy_weight * ours.entropy.sum())
    grad_ref = gradients(model, (reference[0] * weights).sum() + entropy_weight * reference[1].sum())
    # logits are fp32 in both paths: equal to fp32 precision, relative to each gradient's size
    assert all(close(a, b) for a, b in zip(grad_ours, grad_ref, strict=True))


@given(chunk=st.integers(1, 9), with_bias=st.booleans(), temperature=st.sampled_from([1.0, 0.5]))
def test_the_head_function_with_a_bias_and_in_bf16(chunk, with_bias, temperature):
    """The autograd function alone: a biased head, and bf16 weights whose gradients sum in fp32."""
    g = torch.Generator().manual_seed(chunk)
    h = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    y = torch.randint(0, 11, (7,), generator=g)
    logp, entropy = ChunkedHeadScores.apply(h, w, b, y, temperature, chunk)
    log_p = (F.linear(h, w, b).float() / temperature).log_softmax(-1)
    assert torch.allclose(logp, log_p.gather(-1, y[:, None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(entropy, -(log_p.exp() * log_p).sum(-1), atol=1e-5)
    inputs = [t for t in (h, w, b) if t is not None]
    ours = torch.autograd.grad(logp.sum() + entropy.sum(), inputs)
    want = torch.autograd.grad(log_p.gather(-1, y[:, None]).sum() - (log_p.exp() * log_p).sum(), inputs)
    assert all(torch.allclose(a, c, atol=1e-5) for a, c in zip(ours, want, strict=True))

    h16, w16 = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    logp16, _ = ChunkedHeadScores.apply(h16, w16, None, y, temperature, chunk)
    logp16.sum().backward()
    assert h16.grad.dtype == w16.grad.dtype == torch.bfloat16 and torch.isfinite(w16.grad.float()).all()


def test_a_vision_model_scores_through_its_image_tokens():
    source = TinyVLM("abc+=0123456789 ", image_size=16, patch_size=8, vision_hidden_size=16, **SHAPE)
    model = source.model().double()
    processor = source.processor()
    from PIL import Image

    encoded = processor(text="<image>a+b=", images=[Image.new("RGB", (16, 16), "white")], return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    pixels = encoded["pixel_values"].double()
    ours = token_scores(model, ids, mask, 1.0, 3, pixel_values=pixels)
    logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits[:, :-1].float()
    want = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert torch.allclose(ours.logp[:, 1:], want, atol=1e-5)


def test_activation_checkpointing_changes_no_gradient():
    """Per-layer recomputation in backward: the same log-probs and gradients, only less kept."""
    model = tiny(tied=True)
    ids = torch.randint(4, len(ALPHABET) + 4, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    plain = gradients(model, token_scores(model, ids, mask, 1.0, 5).logp.sum())
    checkpoint_decoder_layers(model)
    assert model.is_gradient_checkpointing
    checkpointed = gradients(model.train(), token_scores(model, ids, mask, 1.0, 5).logp.sum())
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(plain, checkpointed, strict=True))
