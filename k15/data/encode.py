"""Prompts to model inputs: token ids, plus the image tensors a vision-language model also takes.

A text prompt is its token ids. An image + text prompt goes through the policy's processor (e.g.
``LlavaProcessor``): one image placeholder per image before the text, which the processor expands
to the image's tokens, and ``pixel_values`` for the model's vision tower:

    "<image>How many circles?" + [png]  →  token_ids  [<bos>, <image>×64, H, o, w, …]
                                           model_inputs {"pixel_values": [1, 3, 64, 64]}

Engines and the policy see the same expanded ids, so a token position means the same thing to
both. The encoded image bytes travel too: vLLM preprocesses images itself.

An instruct or distilled model was trained on conversations, so given a ``ChatFormat`` the prompt
becomes the user's turn of one, after an optional system turn, and the template's generation
prompt (the assistant's header) ends it; without one, the prompt is encoded as plain text:

    ChatFormat("Reason step by step.")  →  "<|im_start|>system\nReason step by step.<|im_end|>\n
                                            <|im_start|>user\nQ:1+2=<|im_end|>\n<|im_start|>assistant\n"
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch import Tensor
from transformers import PreTrainedTokenizerBase, ProcessorMixin


@dataclass(frozen=True)
class ChatFormat:
    """Prompts as chat turns in the model's chat template (``k15.models.ModelSource.prompt_format``;
    None where prompts stay plain text).

    The template is the tokenizer's own, or the processor's for a vision-language model that has
    one (its turns hold typed parts, images among them); a template set in the YAML has already
    replaced theirs (``k15.models.Pretrained``).
    """

    system_prompt: str | None = None  # a system turn before every prompt


@dataclass
class EncodedPrompt:
    token_ids: list[int]
    images: list[bytes] = field(default_factory=list)  # encoded (PNG/JPEG), in the record's order
    model_inputs: dict[str, Tensor] = field(default_factory=dict)  # extra forward() tensors, e.g. pixel_values


def decode_images(images: list[bytes]) -> list[Image.Image]:
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in images]


def chat_text(
    prompt: str,
    images: int,
    chat: ChatFormat,
    tokenizer: PreTrainedTokenizerBase,
    processor: ProcessorMixin | None,
) -> str:
    """The conversation of one user turn (after ``chat``'s system turn, if any) as the template
    writes it, ending in the generation prompt; ``images``: how many images the turn shows."""
    if processor is not None and processor.chat_template is not None:
        # processor templates read typed parts, and write each image's placeholder themselves
        system = [{"type": "text", "text": chat.system_prompt}]
        user = [{"type": "image"}] * images + [{"type": "text", "text": prompt}]
        template = processor
    else:  # a tokenizer template reads strings: the placeholders go where plain prompts have them
        system = chat.system_prompt
        user = (processor.image_token * images if images else "") + prompt
        template = tokenizer
    turns = [{"role": "system", "content": system}] if chat.system_prompt is not None else []
    return template.apply_chat_template(
        [*turns, {"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )


def encode_prompt(
    prompt: str,
    images: list[bytes],
    tokenizer: PreTrainedTokenizerBase,
    processor: ProcessorMixin | None,
    chat: ChatFormat | None = None,
) -> EncodedPrompt:
    """Token ids (with <bos> where the tokenizer or template has one) and, for image prompts,
    the processor's image tensors; the prompt in ``chat``'s template, or plain text for None."""
    if images and processor is None:
        raise ValueError(
            f"a prompt has {len(images)} image(s) but the policy has no image processor (a text-only model?): "
            f"{prompt!r}"
        )
    if chat is None:
        text, special_tokens = (processor.image_token * len(images) if images else "") + prompt, True
    else:  # the template already wrote any <bos>: the tokenizer adding its own would double it
        text, special_tokens = chat_text(prompt, len(images), chat, tokenizer, processor), False
    if not images:
        return EncodedPrompt(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])
    encoded = processor(text=text, images=decode_images(images), add_special_tokens=special_tokens, return_tensors="pt")
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
