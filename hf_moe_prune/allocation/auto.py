"""`auto`: not an allocation but a search among the expert-count allocations that need nothing beyond the scores
(`uniform`, `global`, `learned`, ...), judged on the held-out calibration rows like `method="auto"` (see
`hf_moe_prune.pipeline.auto`)."""

from hf_moe_prune.registries import register_allocation

register_allocation(
    "auto",
    searches=True,
    description="the allocation whose plan the held-out rows measure best (with method='auto': every pair)",
)(None)
