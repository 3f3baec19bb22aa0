"""granitemoehybrid: router `router`; fused routed experts `experts`."""

from .base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "granitemoehybrid",
    MoEAdapter(
        "granitemoehybrid",
        "GraniteMoeHybridMoE",
        router="router",
        count_keys=("num_local_experts",),
    ),
)
