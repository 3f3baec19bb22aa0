"""granitemoeshared: router `router`; fused routed experts `experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "granitemoeshared",
    MoEAdapter(
        "granitemoeshared",
        "GraniteMoeSharedMoE",
        router="router",
        count_keys=("num_local_experts",),
    ),
)
