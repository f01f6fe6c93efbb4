"""Model sources: the YAML-selectable answer to "which weights and tokenizer does this run start from?"

    model:
      class_path: k15.models.Pretrained       # a save_pretrained folder (HF or a k15 export)
      init_args: {path: runs/tiny_sft/hf}

The tokenizer is built eagerly (the data module needs it at setup); the model only when
``LanguageModule.configure_model`` asks, so a sharding strategy can build it in place.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from k15.models.tiny import char_tokenizer, tiny_qwen2


class ModelSource:
    """Base class: ``tokenizer()`` and ``model()``."""

    def tokenizer(self) -> PreTrainedTokenizerBase:
        raise NotImplementedError

    def model(self) -> PreTrainedModel:
        raise NotImplementedError


class Pretrained(ModelSource):
    """A folder written by ``save_pretrained`` holding both the model and its tokenizer.

    Args:
        path: the folder.
    """

    def __init__(self, path: str):
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(
                f"Pretrained.path: no model at {path!r} (expected a save_pretrained folder with "
                "config.json; for the tiny recipe run `python -m k15 fit -c conf/tiny_sft.yaml` first)"
            )
        self.path = path

    def tokenizer(self) -> PreTrainedTokenizerBase:
        tokenizer = AutoTokenizer.from_pretrained(self.path)
        tokenizer.padding_side = "left"
        return tokenizer

    def model(self) -> PreTrainedModel:
        return AutoModelForCausalLM.from_pretrained(self.path, dtype="float32")


class TinyQwen2(ModelSource):
    """A randomly initialised ~1M-parameter Qwen2 over a character vocabulary.

    Args:
        alphabet: every character the task can produce (no whitespace).
        hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size: Qwen2 shape.
        max_position_embeddings: longest prompt + completion, in tokens.
        seed: initialisation seed; the same seed gives the same weights.
    """

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
        self.shape = dict(
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            seed=seed,
        )
        self._tokenizer = char_tokenizer(alphabet)

    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def model(self) -> PreTrainedModel:
        return tiny_qwen2(self._tokenizer, **self.shape)
