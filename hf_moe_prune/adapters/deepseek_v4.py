"""deepseek_v4: router `gate`; fused routed experts `experts`; shared `shared_experts` left alone;
`e_score_correction_bias` sliced with the router.

Top-k layers: `sqrtsoftplus` scores plus `e_score_correction_bias` (selection only), `routed_scaling_factor`, no
expert groups. The first `mlp_layer_types == "hash_moe"` layers (`is_hash`) pick their experts from a fixed
`tid2eid[input_ids]` table and use the router's weight only for the gate values: dropping experts there would change
which experts tokens go to, so those layers keep all their experts (`fixed_routing`) and only the top-k layers are
pruned; the plan is then non-uniform and reloads through the saved per-layer counts. Neuron pruning narrows the
experts of both kinds of layer.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "deepseek_v4",
    MoEAdapter(
        "deepseek_v4",
        "DeepseekV4SparseMoeBlock",
        count_keys=("num_local_experts", "n_routed_experts"),
        shared=("shared_experts",),
        fixed_routing="is_hash",
    ),
)
