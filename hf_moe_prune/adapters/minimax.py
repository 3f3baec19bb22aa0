"""minimax: router `gate`; fused routed experts `experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "minimax",
    MoEAdapter(
        "minimax",
        "MiniMaxSparseMoeBlock",
        count_keys=("num_experts", "num_local_experts"),
    ),
)
