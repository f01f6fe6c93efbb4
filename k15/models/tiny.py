"""Tiny Qwen2-architecture models and character tokenizers, built from config (no hub needed).

The same architecture as the Qwen2 checkpoints users train at scale, shrunk to ~1M parameters,
so every code path (transformers, vLLM, save_pretrained) is the real one on a laptop CPU.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def char_tokenizer(alphabet: str, image_token: str | None = None) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet``; ids 0–3 are <pad>, <bos>, <eos>, <unk>, then
    ``image_token`` (a vision model's image placeholder) if given.

    Encoding prepends <bos>; decoding fuses characters back without separators. Whitespace is
    refused for text models: transformers' AutoTokenizer reloads a qwen2 folder as
    ``Qwen2Tokenizer``, which drops whitespace tokens, so the saved folder would not round-trip.
    A vision model's folder (llava) reloads the tokenizer as saved, so there it is allowed.
    """
    if image_token is None and any(c.isspace() for c in alphabet):
        raise ValueError(f"char_tokenizer: the alphabet must not contain whitespace, got {alphabet!r}")
    chars = sorted(set(alphabet))
    specials = SPECIAL_TOKENS + ((image_token,) if image_token else ())
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({c: len(specials) + i for i, c in enumerate(chars)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        extra_special_tokens={"image_token": image_token} if image_token else None,
    )


def qwen2_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    **extra,
) -> Qwen2Config:
    """A Qwen2 (text) config of this shape over ``tokenizer``'s vocabulary, embeddings tied.
    The shape's defaults are ``k15.models.TinyQwen2``'s."""
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def seeded(build: Callable[[], PreTrainedModel], seed: int, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """``build()`` under ``seed`` (the same seed, the same weights; the global RNG untouched), its
    generation config speaking ``tokenizer``'s special tokens."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    return model


def tiny_qwen2(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **shape) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2 causal LM of ``shape`` (``qwen2_config``'s arguments)."""
    return seeded(lambda: Qwen2ForCausalLM(qwen2_config(tokenizer, **shape)), seed, tokenizer)
