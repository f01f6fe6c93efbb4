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


def test_a_hub_id_is_taken_as_from_pretrained_takes_it(tmp_path, monkeypatch):
    """``org/name`` with no such local path is a hub id (resolved when loaded: no network here);
    a path that is neither a folder with config.json nor a hub id is refused at once."""
    monkeypatch.chdir(tmp_path)
    assert Pretrained("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    with pytest.raises(FileNotFoundError, match="Pretrained.path"):
        Pretrained("runs/tiny_sft/hf")  # a local path (a hub id has one slash at most) with no model


CUSTOM_CONFIG = "from transformers import Qwen2Config\n\nclass K15CustomConfig(Qwen2Config):\n    pass\n"
CUSTOM_MODEL = (
    "from transformers import Qwen2ForCausalLM\nfrom .configuration_custom import K15CustomConfig\n\n"
    "class K15CustomForCausalLM(Qwen2ForCausalLM):\n    config_class = K15CustomConfig\n"
)


def test_trust_remote_code_runs_the_code_a_folder_ships(tiny_dir, tmp_path):
    """A folder whose config.json maps the Auto classes to its own modules: with trust_remote_code
    k15 builds the folder's classes, without it transformers' own (same weights either way)."""
    import json
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(tiny_dir, folder)
    (folder / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_custom.py").write_text(CUSTOM_MODEL)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "configuration_custom.K15CustomConfig",
        "AutoModelForCausalLM": "modeling_custom.K15CustomForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    trusted, plain = Pretrained(str(folder), trust_remote_code=True).model(), Pretrained(str(folder)).model()
    assert type(trusted).__name__ == "K15CustomForCausalLM" and type(plain).__name__ == "Qwen2ForCausalLM"
    weights = trusted.state_dict()
    assert weights.keys() == plain.state_dict().keys()
    assert all(torch.equal(weights[key], value) for key, value in plain.state_dict().items())
