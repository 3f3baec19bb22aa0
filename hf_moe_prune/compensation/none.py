"""`none`: the kept experts stay as they are."""

from __future__ import annotations

from hf_moe_prune.registries import register_compensation


@register_compensation("none", changes_weights=False, units=("expert", "neuron"))
def no_compensation(block, kept, context=None) -> None:
    """Leave the kept experts as they are."""
