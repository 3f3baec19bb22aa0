"""mellum: router `gate`; fused routed experts `experts`."""

from .base import ADAPTERS, MoEAdapter

ADAPTERS.add("mellum", MoEAdapter("mellum", "MellumSparseMoeBlock", count_keys=("num_experts", "num_local_experts")))
