"""Model sources: the YAML-selectable answer to "which weights and tokenizer does this run start from?"

    model:
      class_path: k15.models.Pretrained       # a save_pretrained folder (HF or a k15 export) or a hub id
      init_args: {path: runs/tiny_sft/hf}

An instruct or distilled model also asks for its chat template (``prompt_format``), so that rollouts,
held-out evaluation and SFT all show it prompts the way it was trained to read them:

      init_args: {path: Qwen/Qwen2.5-7B-Instruct, chat_template: true, system_prompt: "Reason step by step."}

The tokenizer (and, for a vision-language model, the processor) is built eagerly: the data
module needs it at setup. The model only when ``LanguageModule.configure_model`` asks, so a
sharding strategy can build it in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
)

from k15.data.encode import ChatFormat
from k15.models.tiny import char_tokenizer, tiny_qwen2
from k15.models.tiny_vlm import IMAGE_TOKEN, tiny_llava, tiny_llava_processor


class ModelSource:
    """Base class: ``tokenizer()``, ``model()``, and ``processor()`` for models that take images."""

    def tokenizer(self) -> PreTrainedTokenizerBase:
        raise NotImplementedError

    def model(self) -> PreTrainedModel:
        raise NotImplementedError

    def processor(self) -> ProcessorMixin | None:
        """Turns image + text prompts into model inputs; None for a text-only model."""
        return None

    def prompt_format(self) -> ChatFormat | None:
        """How every prompt is laid out before encoding (``k15.data.encode``); None: plain text."""
        return None

    def max_positions(self) -> int:
        """The longest sequence (prompt + completion, image tokens included) the model takes,
        known before the model is built, so data can be checked against it at start-up."""
        raise NotImplementedError


def is_hub_id(path: str) -> bool:
    """``org/name`` (or ``name``) as the Hugging Face hub spells a repository, and no such local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return not Path(path).exists()


class Pretrained(ModelSource):
    """A model and its tokenizer as ``from_pretrained`` loads them: a folder written by
    ``save_pretrained`` (HF or a k15 export) or a hub id (downloaded, or from the local cache).

    Args:
        path: the folder or the hub id (e.g. ``deepseek-ai/DeepSeek-R1-Distill-Qwen-7B``).
        dtype: the weights' dtype once loaded (``auto``: as saved); fp32 is exact on CPUs, bf16
            halves a GPU's weight memory.
        attn_implementation: transformers' attention kernel (``sdpa``, ``flash_attention_2``,
            ``eager``; None: transformers' default for the model and machine).
        trust_remote_code: run the modelling code a repository ships (models transformers lacks).
        chat_template: prompts as the user's turn of a chat: ``true``, in the model's own chat
            template (an instruct or distilled model's); a Jinja template, in that one instead (it
            replaces the model's, and an export saves it); ``false``, as plain text (a base model).
        system_prompt: a system turn before every prompt; needs a chat template.
    """

    def __init__(
        self,
        path: str,
        dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32",
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
        chat_template: bool | str = False,
        system_prompt: str | None = None,
    ):
        if not (Path(path) / "config.json").is_file() and not is_hub_id(path):
            raise FileNotFoundError(
                f"Pretrained.path: no model at {path!r} (expected a save_pretrained folder with "
                "config.json, or a hub id; for the tiny recipe run `python -m k15 fit -c conf/tiny_sft.yaml` first)"
            )
        if chat_template == "":
            raise ValueError("Pretrained.chat_template: an empty template would leave every prompt empty")
        if system_prompt is not None and chat_template is False:
            raise ValueError(
                f"Pretrained.system_prompt: a system turn needs a chat template to write it in, but {path!r} "
                "has chat_template: false (set chat_template: true for the model's own, or give a Jinja template)"
            )
        self.path = path
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.trust_remote_code = trust_remote_code
        self.chat_template = chat_template
        self.system_prompt = system_prompt

    def config(self):
        return AutoConfig.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)

    def is_vision(self) -> bool:
        return hasattr(self.config(), "vision_config")

    def tokenizer(self) -> PreTrainedTokenizerBase:
        tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
        tokenizer.padding_side = "left"
        # a vision-language model's prompts may use its processor's template instead (processor())
        return self.templated(tokenizer, tokenizer.chat_template is not None or self.is_vision())

    def templated(self, owner: PreTrainedTokenizerBase | ProcessorMixin, has_template: bool):
        """``owner`` (the tokenizer, or a vision model's processor) with the template
        ``chat_template`` names in place: a given one replaces its own, which ``true`` requires."""
        if isinstance(self.chat_template, str):
            owner.chat_template = self.chat_template
        elif self.chat_template and not has_template:
            raise ValueError(
                f"Pretrained.chat_template: the {type(owner).__name__} of {self.path!r} has no chat template; "
                "give one (a Jinja template as chat_template), or set chat_template: false for plain-text prompts"
            )
        return owner

    def prompt_format(self) -> ChatFormat | None:
        return None if self.chat_template is False else ChatFormat(self.system_prompt)

    def model(self) -> PreTrainedModel:
        auto = AutoModelForImageTextToText if self.is_vision() else AutoModelForCausalLM
        return auto.from_pretrained(
            self.path,
            dtype=self.dtype,
            attn_implementation=self.attn_implementation,
            trust_remote_code=self.trust_remote_code,
        )

    def max_positions(self) -> int:
        config = self.config()
        return getattr(config, "text_config", config).max_position_embeddings

    def processor(self) -> ProcessorMixin | None:
        if not self.is_vision():  # a text model has no processor to build
            return None
        processor = AutoProcessor.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
        processor.tokenizer.padding_side = "left"
        # without a template of its own, the processor's prompts are written in its tokenizer's
        has_template = processor.chat_template is not None or processor.tokenizer.chat_template is not None
        return self.templated(processor, has_template)


class TinyQwen2(ModelSource):
    """A randomly initialised ~1M-parameter Qwen2 over a character vocabulary.

    Args:
        alphabet: every character the task can produce (no whitespace).
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: Qwen2 shape.
        max_position_embeddings: longest prompt + completion, in tokens.
        seed: initialisation seed; the same seed gives the same weights.
    """

    image_token: str | None = None  # a vision model's image placeholder, a token of its own

    def __init__(
        self,
        alphabet: str,
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        num_kv_heads: int = 2,
        intermediate_size: int = 256,
        max_position_embeddings: int = 256,
        seed: int = 0,
    ):
        self.alphabet = alphabet
        self.seed = seed
        self.text_shape = dict(
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
        )
        self._tokenizer = char_tokenizer(alphabet, image_token=self.image_token)

    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def model(self) -> PreTrainedModel:
        return tiny_qwen2(self._tokenizer, self.seed, **self.text_shape)

    def max_positions(self) -> int:
        return self.text_shape["max_position_embeddings"]


class TinyVLM(TinyQwen2):
    """A randomly initialised ~0.8M-parameter LLaVA (CLIP ViT + Qwen2) over a character vocabulary.

    Args:
        alphabet: every character prompts and answers use (spaces allowed).
        image_size: images are resized to image_size × image_size.
        patch_size: ViT patch; each image becomes (image_size / patch_size)² tokens.
        vision_hidden_size, vision_layers: the ViT's width and depth.
        **text_shape: the Qwen2 text model's shape and the seed, as ``TinyQwen2`` takes them;
            ``max_position_embeddings`` counts image tokens + prompt + completion.
    """

    image_token = IMAGE_TOKEN

    def __init__(
        self,
        alphabet: str,
        image_size: int = 64,
        patch_size: int = 8,
        vision_hidden_size: int = 64,
        vision_layers: int = 2,
        **text_shape,
    ):
        super().__init__(alphabet, **text_shape)
        self.vision_shape = dict(
            image_size=image_size,
            patch_size=patch_size,
            vision_hidden_size=vision_hidden_size,
            vision_layers=vision_layers,
        )
        self._processor = tiny_llava_processor(self._tokenizer, image_size, patch_size)

    def processor(self) -> ProcessorMixin:
        return self._processor

    def model(self) -> PreTrainedModel:
        return tiny_llava(self._tokenizer, seed=self.seed, **self.vision_shape, **self.text_shape)
