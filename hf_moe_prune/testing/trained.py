"""The bundled trained fixtures (moved to `hf_moe_prune.bundled`; this path keeps working)."""

from hf_moe_prune.bundled import (
    DOC_SEPARATOR,
    DOMAINS,
    FIXTURES,
    FIXTURES_DIR,
    fixture_path,
    fixture_texts,
    mixed_texts,
)

__all__ = ["DOC_SEPARATOR", "DOMAINS", "FIXTURES", "FIXTURES_DIR", "fixture_path", "fixture_texts", "mixed_texts"]
