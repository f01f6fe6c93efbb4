"""Where the policy's weights and tokenizer come from: a pretrained folder or a tiny model."""

from k15.models.source import ModelSource, Pretrained, TinyQwen2, TinyVLM

__all__ = ["ModelSource", "Pretrained", "TinyQwen2", "TinyVLM"]
