"""One small adapter per MoE family; importing this package registers them all."""

from . import mixtral, olmoe, qwen2_moe, qwen3_moe  # noqa: F401  (registration on import)
from .base import ADAPTERS, MoEAdapter, MoEBlock, find_blocks, get_adapter, text_config

__all__ = ["ADAPTERS", "MoEAdapter", "MoEBlock", "find_blocks", "get_adapter", "text_config"]
