"""jamba: router `router`; fused routed experts `experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "jamba",
    MoEAdapter(
        "jamba",
        "JambaSparseMoeBlock",
        router="router",
        count_keys=("num_experts", "num_local_experts"),
    ),
)
