"""granitemoe_swa: router `router`; fused routed experts `experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "granitemoe_swa",
    MoEAdapter(
        "granitemoe_swa",
        "GraniteMoeSWAMoE",
        router="router",
        count_keys=("num_local_experts",),
    ),
)
