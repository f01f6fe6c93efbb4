"""Chat templates: an instruct or distilled model sees every prompt as a chat turn in its template,
the same ids in rollouts, held-out evaluation and SFT; without one, prompts stay plain text.

Real components throughout: a byte-level BPE tokenizer with a Qwen-style template and a tiny
Qwen2, saved and reloaded by ``k15.models.Pretrained`` (``tests/chat_model.py``); the data
modules under a real Trainer holding the real policy and SFT modules (their models never built);
the tiny VLM's real LLaVA processor for image prompts.
"""

import io
import re
import unicodedata

import lightning
import pytest
from chat_model import GENERATION_PROMPT, chat_model_folder, chat_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from k15.data.encode import ChatFormat, decode_images, encode_prompt
from k15.data.prompts import PromptDataModule
from k15.data.sft import IGNORE_INDEX, SFTDataModule
from k15.data.shards import write_shards
from k15.models import Pretrained, TinyVLM
from k15.policy import PolicyModule
from k15.rollout import RolloutCallback
from k15.rollout.hf import HFEngine
from k15.sft import SFTModule

SYSTEM = "Please reason step by step."
PROMPT = "What is 12+34?"
CONTEXT = 512  # chat_model_folder's max_position_embeddings
OTHER_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return chat_model_folder(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def chat_source(chat_dir) -> Pretrained:
    return Pretrained(str(chat_dir), chat_template=True, system_prompt=SYSTEM)


def conversation(prompt: str, system: str | None = SYSTEM) -> list[dict]:
    return ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}
    ]


def templated_ids(tokenizer, prompt: str, system: str | None = SYSTEM) -> list[int]:
    """The template's rendering, tokenized once (transformers adds no special tokens to it)."""
    return tokenizer.apply_chat_template(conversation(prompt, system), add_generation_prompt=True, return_dict=False)


def encoded(source: Pretrained, prompt: str) -> list[int]:
    return encode_prompt(prompt, [], source.tokenizer(), None, source.prompt_format()).token_ids


def test_prompts_are_the_user_turn_of_the_models_own_template(chat_source, chat_dir):
    tokenizer = chat_source.tokenizer()
    ids = encoded(chat_source, PROMPT)
    assert ids == templated_ids(tokenizer, PROMPT)
    assert tokenizer.decode(ids) == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{PROMPT}<|im_end|>\n{GENERATION_PROMPT}"
    )
    without_system = Pretrained(str(chat_dir), chat_template=True)
    ids = encoded(without_system, PROMPT)
    assert ids == templated_ids(tokenizer, PROMPT, system=None)
    assert tokenizer.decode(ids) == f"<|im_start|>user\n{PROMPT}<|im_end|>\n{GENERATION_PROMPT}"


def test_without_a_template_prompts_stay_plain_text(chat_dir, tiny_dir):
    for plain in (Pretrained(str(chat_dir)), Pretrained(str(tiny_dir))):
        assert plain.prompt_format() is None
        assert encoded(plain, PROMPT) == plain.tokenizer()(PROMPT)["input_ids"]


def tokenizer_folder(path, tokenizer, config_from) -> str:
    """``path`` holding ``tokenizer`` and the config of ``config_from``: all ``Pretrained`` reads before the weights."""
    tokenizer.save_pretrained(path)
    (path / "config.json").write_bytes((config_from / "config.json").read_bytes())
    return str(path)


def test_a_given_template_replaces_the_models_and_is_what_an_export_saves(chat_dir, tmp_path):
    base = chat_tokenizer()
    base.chat_template = None  # as a base model's
    for path in (str(chat_dir), tokenizer_folder(tmp_path / "base", base, chat_dir)):
        source = Pretrained(path, chat_template=OTHER_TEMPLATE, system_prompt="be brief")
        tokenizer = source.tokenizer()
        ids = encoded(source, "Q:1+2=")
        assert tokenizer.decode(ids) == "[system] be brief\n[user] Q:1+2=\n[assistant] "
        assert ids == tokenizer("[system] be brief\n[user] Q:1+2=\n[assistant] ", add_special_tokens=False)["input_ids"]
    exported = tokenizer_folder(tmp_path / "export", tokenizer, chat_dir)  # as ExportPretrained saves the policy's
    assert Pretrained(exported, chat_template=True).tokenizer().chat_template == OTHER_TEMPLATE


def test_a_bos_the_template_writes_is_not_doubled():
    """DeepSeek-R1-Distill-style: the tokenizer prepends <bos> and so does the template."""
    tokenizer = chat_tokenizer(bos=True)
    assert tokenizer(PROMPT)["input_ids"][0] == tokenizer.bos_token_id
    ids = encode_prompt(PROMPT, [], tokenizer, None, ChatFormat(SYSTEM)).token_ids
    assert ids == templated_ids(tokenizer, PROMPT)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_misconfigured_templates_are_errors_naming_the_setting(chat_dir, tiny_dir):
    with pytest.raises(ValueError, match="Pretrained.system_prompt: .*chat_template: false"):
        Pretrained(str(chat_dir), system_prompt=SYSTEM)
    with pytest.raises(ValueError, match=f"Pretrained.chat_template: .*{re.escape(repr(str(tiny_dir)))} has no chat"):
        Pretrained(str(tiny_dir), chat_template=True).tokenizer()
    with pytest.raises(ValueError, match="Pretrained.chat_template: an empty template"):
        Pretrained(str(chat_dir), chat_template="")


@settings(max_examples=30, deadline=None)
@given(prompt=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
def test_any_prompt_survives_the_template(chat_source, prompt):
    tokenizer = chat_source.tokenizer()
    text = tokenizer.decode(encoded(chat_source, prompt), clean_up_tokenization_spaces=False)
    # the tokenizer's normaliser is NFC, as Qwen's
    assert f"<|im_start|>user\n{unicodedata.normalize('NFC', prompt)}<|im_end|>\n" in text
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n") and text.endswith(GENERATION_PROMPT)


def trainer_holding(module: lightning.LightningModule) -> lightning.Trainer:
    trainer = lightning.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.strategy.connect(module)
    return trainer


def test_rollout_and_heldout_prompts_use_the_template_and_its_length_counts(chat_source, tmp_path):
    tokenizer = chat_source.tokenizer()
    short = ["Q: 1+1=", "Q: 2+2="]
    longer = "Q: 1+1= please answer"  # fits as plain text, not once templated
    limit = max(len(templated_ids(tokenizer, p)) for p in short)
    assert len(tokenizer(longer)["input_ids"]) < limit < len(templated_ids(tokenizer, longer))
    records = [{"prompt": p, "answer": "2", "difficulty": 1} for p in (short[0], longer, short[1])]
    write_shards(records, str(tmp_path / "train-%06d.tar"))
    rollout = RolloutCallback(HFEngine(), max_new_tokens=CONTEXT - limit)
    policy = PolicyModule(chat_source, rollout, heldout_max_new_tokens=16)
    assert policy.max_rollout_prompt_tokens == limit
    dm = PromptDataModule(
        str(tmp_path / "train-*.tar"), str(tmp_path / "train-*.tar"), shuffle_buffer=0, prompts_per_iteration=2
    )
    dm.trainer = trainer_holding(policy)
    dm.setup("fit")

    batch = dm.on_before_batch_transfer(0, 0)
    assert batch.prompts == short and dm.stream.skipped["too_long"] == 1
    assert batch.prompt_ids == [templated_ids(tokenizer, p) for p in short]
    (heldout,) = dm.val_dataloader()
    assert heldout.prompts == [r["prompt"] for r in records]
    assert heldout.prompt_ids == [templated_ids(tokenizer, r["prompt"]) for r in records]


def test_an_sft_solution_is_the_assistant_turn_after_the_templated_prompt(chat_source, tmp_path):
    tokenizer = chat_source.tokenizer()
    records = [
        {"prompt": p, "answer": a, "difficulty": 1, "solution": f"{p[3:-1]}={a}. A:{a}"}
        for p, a in (("Q: 1+1=", "2"), ("Q: 12+34=", "46"))
    ]
    write_shards(records, str(tmp_path / "train-%06d.tar"))
    dm = SFTDataModule(
        str(tmp_path / "train-*.tar"), str(tmp_path / "train-*.tar"), shuffle_buffer=0, examples_per_step=2
    )
    dm.trainer = trainer_holding(SFTModule(chat_source))
    dm.setup("fit")
    batch = dm.on_before_batch_transfer(0, 0)
    for record, ids, mask, labels in zip(records, batch.input_ids, batch.attention_mask, batch.labels, strict=True):
        prompt = templated_ids(tokenizer, record["prompt"])
        solution = tokenizer(record["solution"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert ids[mask.bool()].tolist() == prompt + solution
        assert labels[mask.bool()].tolist() == [IGNORE_INDEX] * len(prompt) + solution


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


VLM_ALPHABET = "abcdefghijklmnopqrstuvwxyz?:. "
# Writes only the tiny VLM's alphabet. Its processor's version reads typed parts, the tokenizer's
# strings (with the placeholders in them); both write the same text.
PROCESSOR_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'][0] }}:{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}{% endfor %}.{% endfor %}"
    "{% if add_generation_prompt %}a:{% endif %}"
)
TOKENIZER_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}.{% endfor %}"
    "{% if add_generation_prompt %}a:{% endif %}"
)


def test_an_image_prompt_is_written_by_the_processors_template_else_the_tokenizers():
    prompt, images, chat = "how many circles?", [png(), png()], ChatFormat("be brief")
    with_processor_template, with_tokenizer_template = TinyVLM(VLM_ALPHABET), TinyVLM(VLM_ALPHABET)
    with_processor_template.processor().chat_template = PROCESSOR_TEMPLATE
    with_tokenizer_template.tokenizer().chat_template = TOKENIZER_TEMPLATE
    processor = with_processor_template.processor()
    expected = processor(
        text="<bos>s:be brief.u:<image><image>how many circles?.a:",
        images=decode_images(images),
        add_special_tokens=False,
        return_tensors="pt",
    )
    plain = encode_prompt(prompt, images, processor.tokenizer, processor)
    for source in (with_processor_template, with_tokenizer_template):
        image_prompt = encode_prompt(prompt, images, source.tokenizer(), source.processor(), chat)
        assert image_prompt.token_ids == expected["input_ids"][0].tolist()
        assert (image_prompt.model_inputs["pixel_values"] == plain.model_inputs["pixel_values"]).all()
        text_prompt = encode_prompt(prompt, [], source.tokenizer(), source.processor(), chat)
        assert source.tokenizer().decode(text_prompt.token_ids) == "<bos>s:be brief.u:how many circles?.a:"


def test_a_vision_models_template_is_its_processors_or_the_one_given(tmp_path):
    source = TinyVLM(VLM_ALPHABET, hidden_size=32, num_layers=1, num_heads=1, num_kv_heads=1)
    source.model().save_pretrained(tmp_path)
    source.processor().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="Pretrained.chat_template: the LlavaProcessor of .* has no chat template"):
        Pretrained(str(tmp_path), chat_template=True).processor()
    given_one = Pretrained(str(tmp_path), chat_template=PROCESSOR_TEMPLATE).processor()
    assert given_one.chat_template == PROCESSOR_TEMPLATE
    given_one.save_pretrained(tmp_path)
    assert Pretrained(str(tmp_path), chat_template=True).processor().chat_template == PROCESSOR_TEMPLATE
