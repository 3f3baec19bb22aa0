"""Expert scoring methods, one module each, registered on import in `METHODS`."""

from hf_moe_prune.methods import compel, diep, ean, frequency, random, reap, soft_count, tenp  # noqa: F401  (registration on import)
from hf_moe_prune.methods.base import (
    METHODS,
    NEURON_STATISTICS,
    OUTPUT_STATISTICS,
    STATISTICS,
    ScoringMethod,
    register_method,
)

__all__ = ["METHODS", "NEURON_STATISTICS", "OUTPUT_STATISTICS", "STATISTICS", "ScoringMethod", "register_method"]
