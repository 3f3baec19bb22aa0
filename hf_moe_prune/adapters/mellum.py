"""mellum: router `gate`; fused routed experts `experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add("mellum", MoEAdapter("mellum", "MellumSparseMoeBlock", count_keys=("num_experts", "num_local_experts")))
