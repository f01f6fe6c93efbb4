"""A tiny vision-language model built from config: LLaVA = CLIP vision tower → projector → Qwen2.

LLaVA is the simplest VLM layout (a fixed number of image tokens per image, one ``pixel_values``
stack per batch) and one vLLM serves. Its parts here are the real transformers classes, shrunk:

    image [3, S, S] → CLIP ViT (patch P) → (S/P)² patch features → MLP projector → (S/P)² image
    tokens spliced into the Qwen2 text model's input where the prompt holds <image> placeholders

Its processor (``LlavaProcessor`` with the PIL CLIP image processor) needs no torchvision.
"""

from __future__ import annotations

from transformers import (
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip import CLIPImageProcessorPil

from k15.models.tiny import qwen2_config, seeded

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
    *,
    image_size: int,
    patch_size: int,
    vision_hidden_size: int,
    vision_layers: int,
    seed: int = 0,
    **text_shape,
) -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA: a CLIP ViT of this size, and a Qwen2 text model of
    ``text_shape`` (``k15.models.tiny.qwen2_config``'s arguments)."""
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=max(1, vision_hidden_size // 32),
        image_size=image_size,
        patch_size=patch_size,
    )
    # vLLM builds the language model from ``architectures``
    text = qwen2_config(tokenizer, architectures=["Qwen2ForCausalLM"], **text_shape)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    return seeded(lambda: LlavaForConditionalGeneration(config), seed, tokenizer)
