"""switch_transformers: an encoder-decoder whose sparse feed-forward layers (`SwitchTransformersSparseMLP`, in the
encoder and the decoder) route each token to its top-1 expert: router `router` (logits from `router.classifier`,
softmax over all experts, the chosen expert's probability scales its output), experts one module each
(`experts.expert_{i}`, a `wi`/`wo` pair), called with a one-hot dispatch mask.

Each expert takes at most `expert_capacity` tokens of a sequence; the tokens over it skip the layer (residual only).
Pruning keeps the per-expert capacity, exactly as the masked model computes it, so with fewer experts more tokens of
long sequences may overflow: raise `expert_capacity` in the config (`from_pretrained(..., expert_capacity=N)`) when
that matters. Encoder layers are numbered first, decoder layers after them.
"""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "switch_transformers",
    MoEAdapter(
        "switch_transformers",
        "SwitchTransformersSparseMLP",
        router="router",
        router_weight="classifier.weight",
        count_keys=("num_experts",),
        dispatch_mask=True,
        top_k=1,
    ),
)
