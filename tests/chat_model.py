"""A tiny chat model folder built here (no hub): a byte-level BPE with Qwen's special tokens and a
Qwen2.5-style chat template, and a randomly initialised Qwen2 over it.

Instruct and distilled models only behave when prompts arrive in their chat template, so the
template path needs a real tokenizer that has one; the tiny recipe's character tokenizer has none.
The BPE is trained with the normaliser, pre-tokeniser and decoder ``Qwen2Tokenizer`` rebuilds a
qwen2 folder with, so the saved folder reloads as the same tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from k15.models.tiny import tiny_qwen2

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS = "<|begin_of_sentence|>"  # a DeepSeek-R1-Distill-style tokenizer's, see chat_tokenizer(bos=True)

# Qwen2.5's template less its tool calling: a system turn only when one is given, then the turns,
# then the assistant's header for the model to continue.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
GENERATION_PROMPT = "<|im_start|>assistant\n"


def corpus() -> list[str]:
    """A few hundred lines of the text prompts and solutions hold: arithmetic, words, punctuation."""
    words = "what is the sum of and please reason step by step answer a system you are helpful assistant".split()
    return [
        f"Q: {i}+{i * 7 % 13}={i + i * 7 % 13}. {' '.join(words[j % len(words)] for j in range(i, i + 6))}!\n"
        for i in range(300)
    ]


def chat_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """Qwen-style: no <bos>, ``<|im_end|>`` ends a turn (and generation), ``<|endoftext|>`` pads.

    ``bos``: DeepSeek-R1-Distill-style instead, where the tokenizer prepends a <bos> and the
    template writes one too (``{{ bos_token }}``); only one may survive encoding.
    """
    specials = SPECIAL_TOKENS + ([BOS] if bos else [])
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS if bos else None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        padding_side="left",
        chat_template=("{{- bos_token }}" if bos else "") + CHAT_TEMPLATE,
    )


def chat_model_folder(path: Path) -> Path:
    """``path`` holding a save_pretrained chat model: ``chat_tokenizer()`` and a ~40k-parameter Qwen2.

    One head of 32 (the smallest head vLLM's CPU attention takes), 2 layers, 512 positions.
    """
    tokenizer = chat_tokenizer()
    model = tiny_qwen2(
        tokenizer,
        hidden_size=32,
        num_layers=2,
        num_heads=1,
        num_kv_heads=1,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)
