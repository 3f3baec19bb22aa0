"""dbrx: softmax top-k router `router` (logits from the linear `router.layer`, gates normalized by their p-norm);
experts stored flattened as `experts.mlp.{w1, v1, w2}` of shape `[E * ffn_hidden, hidden]`, sliced per expert; the
expert count lives in the nested `ffn_config.moe_num_experts`."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "dbrx",
    MoEAdapter(
        "dbrx",
        "DbrxFFN",
        router="router",
        router_weight="layer.weight",
        count_keys=("ffn_config.moe_num_experts",),
        flat_expert_tensors=("mlp.w1", "mlp.v1", "mlp.w2"),
    ),
)
