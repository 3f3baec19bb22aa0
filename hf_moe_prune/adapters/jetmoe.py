"""jetmoe: the MLP is a top-k softmax MoE (`JetMoeMoE`) whose router `router` (logits from the linear
`router.layer`, softmax over the top-k logits only) sorts the (token, slot) rows by expert; each expert's first linear
is `input_linear.weight[e]` (gate and up halves, `[2I, hidden]`) and its second `output_linear.weight[e]`.

Its attention is a mixture of attention heads (`JetMoeMoA`, routed too) sized by the same `num_local_experts`, so no
config key counts the MLP experts alone: they are pruned, the attention experts are left whole, and the pruned
checkpoint carries its per-layer counts in `quantization_config` (no `count_keys`).
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "jetmoe",
    MoEAdapter(
        "jetmoe",
        "JetMoeMoE",
        router="router",
        experts="input_linear",
        more_experts=("output_linear",),
        router_weight="layer.weight",
        count_keys=(),
        routing="sorted_dispatch",
    ),
)
