"""granitemoeshared: router `router`; fused routed experts `experts`."""

from .base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "granitemoeshared",
    MoEAdapter(
        "granitemoeshared",
        "GraniteMoeSharedMoE",
        router="router",
        count_keys=("num_local_experts",),
    ),
)
