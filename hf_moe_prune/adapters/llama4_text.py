"""llama4_text: sigmoid top-k router `router` (an `nn.Linear`) whose gates scale the input of the experts; fused,
transposed experts run on every token (unselected ones on a zero input); shared `shared_expert` left alone.

Statistics: the selected experts and gates come from the router's `[tokens, E]` scores; the observed output of a
selected expert is f_j(g * x), which already carries the gate, so REAP's g * ||f_j|| is read as ||f_j(g * x)||.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "llama4_text",
    MoEAdapter(
        "llama4_text",
        "Llama4TextMoe",
        router="router",
        count_keys=("num_local_experts",),
        shared=("shared_expert",),
        routing="dense_scaled_input",
    ),
)
