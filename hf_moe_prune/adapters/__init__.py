"""One small adapter per MoE family; importing this package registers them all (every module in it but `base`)."""

import importlib
import pkgutil

from hf_moe_prune.adapters.base import (
    ADAPTERS,
    MoEAdapter,
    MoEBlock,
    find_blocks,
    get_adapter,
    per_expert_modules,
    text_config,
)

# A new family is one new file here: no list to keep in sync.
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ADAPTERS", "MoEAdapter", "MoEBlock", "find_blocks", "get_adapter", "per_expert_modules", "text_config"]
