"""zaya: MLP router `gate` (logits from `router_mlp.out_proj`); fused routed experts `experts`; `balancing_biases`
sliced with the router.

The router scores E + 1 classes: the last is a "skip" (no expert), with its own balancing bias. A skip pick reaches the
experts as expert 0 with gate 0, which the observers do not count as use of expert 0. The router finds the skip class
at `config.num_experts`, shared by all layers, so every layer keeps the same number of experts (elsewhere a skip pick
would reach the experts as an out-of-range index, garbage under the default `grouped_mm` experts).

Each router also adds the previous layer's router states (`prev_router_hidden_states`), carried from layer to layer:
the block does not route alone (compensation that re-runs blocks is refused) and streaming is refused.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "zaya",
    MoEAdapter(
        "zaya",
        "ZayaSparseMoeBlock",
        router_tensors=("balancing_biases",),
        router_weight="router_mlp.out_proj.weight",
        trailing_rows=1,
        count_attrs=("num_experts", "num_router_classes"),
        same_count=True,
        standalone=False,
        layer_state=True,
    ),
)
