"""k15: config-as-code RL for LLM reasoning on PyTorch Lightning — the Kimi k1.5 recipe."""

__version__ = "0.1.0"
