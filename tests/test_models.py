"""Tiny models and tokenizers: deterministic, and real save_pretrained folders."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from k15.data.arithmetic import ALPHABET
from k15.models import Pretrained, TinyQwen2
from k15.models.tiny import char_tokenizer


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40))
def test_char_tokenizer_round_trips(text):
    tok = char_tokenizer(ALPHABET)
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_whitespace_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="whitespace"):
        char_tokenizer("01 ")


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (TinyQwen2(ALPHABET, hidden_size=32, num_layers=1, seed=s).model() for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_folder_loads_with_transformers_auto_classes(tiny_dir):
    source = Pretrained(str(tiny_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    text = "Q:12+34="
    assert (
        tokenizer(text)["input_ids"]
        == source.tokenizer()(text)["input_ids"]
        == char_tokenizer(ALPHABET)(text)["input_ids"]
    )
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    torch.testing.assert_close(model(ids).logits, source.model()(ids).logits)


def test_dtype_and_attention_kernel_come_from_the_config(tiny_dir):
    source = Pretrained(str(tiny_dir), dtype="bfloat16", attn_implementation="eager")
    model = source.model()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager"
    assert Pretrained(str(tiny_dir)).model().dtype == torch.float32  # exact fp32 unless asked


def test_missing_folder_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="Pretrained.path"):
        Pretrained(str(tmp_path / "nothing"))
