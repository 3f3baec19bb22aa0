"""flex_olmo: router `gate`; fused routed experts `experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "flex_olmo",
    MoEAdapter(
        "flex_olmo",
        "FlexOlmoSparseMoeBlock",
        count_keys=("num_experts", "num_local_experts"),
    ),
)
