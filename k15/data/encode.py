"""Prompts to model inputs: token ids, plus the image tensors a vision-language model also takes.

A text prompt is its token ids. An image + text prompt goes through the policy's processor (e.g.
``LlavaProcessor``): one image placeholder per image before the text, which the processor expands
to the image's tokens, and ``pixel_values`` for the model's vision tower:

    "<image>How many circles?" + [png]  →  token_ids  [<bos>, <image>×64, H, o, w, …]
                                           model_inputs {"pixel_values": [1, 3, 64, 64]}

Engines and the policy see the same expanded ids, so a token position means the same thing to
both. The encoded image bytes travel too: vLLM preprocesses images itself.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor
from transformers import PreTrainedTokenizerBase, ProcessorMixin


@dataclass
class EncodedPrompt:
    token_ids: list[int]
    images: list[bytes] = field(default_factory=list)  # encoded (PNG/JPEG), in the record's order
    model_inputs: dict[str, Tensor] = field(default_factory=dict)  # extra forward() tensors, e.g. pixel_values


def decode_images(images: list[bytes]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in images]


def encode_prompt(
    prompt: str, images: list[bytes], tokenizer: PreTrainedTokenizerBase, processor: ProcessorMixin | None
) -> EncodedPrompt:
    """Token ids (with <bos>) and, for image prompts, the processor's image tensors."""
    if not images:
        return EncodedPrompt(tokenizer(prompt)["input_ids"])
    if processor is None:
        raise ValueError(
            f"a prompt has {len(images)} image(s) but the policy has no image processor (a text-only model?): "
            f"{prompt!r}"
        )
    encoded = processor(
        text=processor.image_token * len(images) + prompt, images=decode_images(images), return_tensors="pt"
    )
    model_inputs = {key: value for key, value in encoded.items() if key not in ("input_ids", "attention_mask")}
    return EncodedPrompt(encoded["input_ids"][0].tolist(), list(images), model_inputs)


def concat_model_inputs(rows: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Rows' extra inputs as one batch's: each key's tensors concatenated along dim 0, in row order.

    Vision-language models take the images of a whole batch as one stack (LLaVA's
    ``pixel_values`` [images, 3, H, W]; Qwen2-VL's patches and ``image_grid_thw``) and match them
    to the image tokens in reading order, so rows without images simply add nothing.
    """
    keys = dict.fromkeys(key for row in rows for key in row)
    return {key: torch.cat([row[key] for row in rows if key in row]) for key in keys}
