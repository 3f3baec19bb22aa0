"""granitemoehybrid: router `router`; fused routed experts `experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "granitemoehybrid",
    MoEAdapter(
        "granitemoehybrid",
        "GraniteMoeHybridMoE",
        router="router",
        count_keys=("num_local_experts",),
    ),
)
