"""granitemoe: router `router`; fused routed experts `experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "granitemoe",
    MoEAdapter(
        "granitemoe",
        "GraniteMoeMoE",
        router="router",
        count_keys=("num_local_experts",),
    ),
)
