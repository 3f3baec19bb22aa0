"""`auto`: not a compensation but a search. The plans `method`/`allocation` chose are judged again with each
compensation that can be tried and undone (`Compensator.touches`), on the held-out calibration rows, and the one with
the lowest KL is applied (`none` included). See `hf_moe_prune.pipeline.auto`."""

from hf_moe_prune.registries import register_compensation

register_compensation(
    "auto",
    searches=True,
    changes_weights=True,
    description="the compensation (none included) whose result the held-out rows measure best",
)(None)
