"""A tiny vision-language model built from config: LLaVA = CLIP vision tower → projector → Qwen2.

LLaVA is the simplest VLM layout (a fixed number of image tokens per image, one ``pixel_values``
stack per batch) and one vLLM serves. Its parts here are the real transformers classes, shrunk:

    image [3, S, S] → CLIP ViT (patch P) → (S/P)² patch features → MLP projector → (S/P)² image
    tokens spliced into the Qwen2 text model's input where the prompt holds <image> placeholders

Its processor (``LlavaProcessor`` with the PIL CLIP image processor) needs no torchvision.
"""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.models.clip import CLIPImageProcessorPil

IMAGE_TOKEN = "<image>"


def tiny_llava_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    """Images resized (not cropped: text drawn across a wide image must survive) to S × S."""
    image_processor = CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
    )
    # num_additional_image_tokens=1 and the "default" strategy: CLIP's CLS token is dropped
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def tiny_llava(
    tokenizer: PreTrainedTokenizerFast,
    image_size: int = 64,
    patch_size: int = 8,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA; the same seed always gives the same weights."""
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=max(1, vision_hidden_size // 32),
        image_size=image_size,
        patch_size=patch_size,
    )
    text = Qwen2Config(
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
        architectures=["Qwen2ForCausalLM"],  # vLLM builds the language model from this
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    generation = model.generation_config
    generation.pad_token_id, generation.bos_token_id, generation.eos_token_id = (
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
    )
    return model
