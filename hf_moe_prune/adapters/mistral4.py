"""mistral4: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "mistral4",
    MoEAdapter(
        "mistral4",
        "Mistral4MoE",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
    ),
)
