"""Test helpers: tiny random MoE models and a tokenizer, built offline from configs (no downloads).

Use them to try an adapter or a method in seconds::

    from hf_moe_prune.testing import tiny_model, tiny_tokenizer
    model = tiny_model("qwen3_moe")
"""

from .tiny import TINY_FAMILIES, SAMPLE_TEXT, save_tiny_model, tiny_config, tiny_model, tiny_tokenizer

__all__ = ["SAMPLE_TEXT", "TINY_FAMILIES", "save_tiny_model", "tiny_config", "tiny_model", "tiny_tokenizer"]
