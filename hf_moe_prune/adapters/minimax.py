"""minimax: router `gate`; fused routed experts `experts`."""

from .base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "minimax",
    MoEAdapter(
        "minimax",
        "MiniMaxSparseMoeBlock",
        count_keys=("num_experts", "num_local_experts"),
    ),
)
