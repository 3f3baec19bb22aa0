"""Mixtral: softmax top-k router `gate` that always renormalizes over the selected experts."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "mixtral",
    MoEAdapter("mixtral", "MixtralSparseMoeBlock", count_keys=("num_local_experts", "num_experts")),
)
