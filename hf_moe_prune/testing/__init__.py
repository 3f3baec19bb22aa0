"""Test helpers: tiny random MoE models and a tokenizer, built offline from configs (no downloads).

Use them to try an adapter or a method in seconds::

    from hf_moe_prune.testing import tiny_model, tiny_tokenizer
    model = tiny_model("qwen3_moe")
"""

from hf_moe_prune.testing.tiny import (
    SAMPLE_TEXT,
    TINY_FAMILIES,
    save_tiny_model,
    tiny_config,
    tiny_model,
    tiny_tokenizer,
)
from hf_moe_prune.testing.trained import DOMAINS, FIXTURES, fixture_path, fixture_texts, mixed_texts

__all__ = [
    "DOMAINS",
    "FIXTURES",
    "SAMPLE_TEXT",
    "TINY_FAMILIES",
    "fixture_path",
    "fixture_texts",
    "mixed_texts",
    "save_tiny_model",
    "tiny_config",
    "tiny_model",
    "tiny_tokenizer",
]
