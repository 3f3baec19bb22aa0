"""lara_mini: softmax top-k router `gate` (renormalized), fused experts, and a shared expert `shared_expert` that is
always added in full (no gate): left alone. Hybrid Gated-DeltaNet attention."""

from hf_moe_prune.adapters.base import ADAPTERS, MoEAdapter

ADAPTERS.add(
    "lara_mini",
    MoEAdapter("lara_mini", "LaraMiniSparseMoeBlock", shared=("shared_expert",)),
)
