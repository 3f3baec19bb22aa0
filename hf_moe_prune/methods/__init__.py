"""Expert scoring methods, one module each, registered on import in `METHODS`."""

from hf_moe_prune.methods import (  # noqa: F401  (registration on import)
    auto,
    compel,
    diep,
    ean,
    frequency,
    hope,
    man,
    output_error,
    random,
    reap,
    soft_count,
    tenp,
)
from hf_moe_prune.methods.base import (
    METHODS,
    NEURON_STATISTICS,
    OUTPUT_STATISTICS,
    PAIR_STATISTICS,
    STATISTICS,
    ScoringMethod,
    register_method,
)

__all__ = [
    "METHODS",
    "NEURON_STATISTICS",
    "OUTPUT_STATISTICS",
    "PAIR_STATISTICS",
    "STATISTICS",
    "ScoringMethod",
    "register_method",
]
