"""hunyuan_v1_moe: router `gate` (logits from `wg`); fused routed experts `experts`; shared `shared_mlp` left alone.

Router logits from the linear `gate.wg`.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "hunyuan_v1_moe",
    MoEAdapter(
        "hunyuan_v1_moe",
        "HunYuanMoEV1Moe",
        router_weight="wg.weight",
        count_keys=("num_experts", "num_local_experts"),
        shared=("shared_mlp",),
    ),
)
