"""Compensation: adjust the kept experts after pruning so that the layer output changes least.

Only `none` exists so far; the registry is the place where weight compensation methods plug in.
"""

from __future__ import annotations

from collections.abc import Callable

from .registry import Registry

COMPENSATIONS: Registry[Callable] = Registry("compensation")


@COMPENSATIONS.register("none")
def no_compensation(block, kept, stats) -> None:
    """Leave the kept experts as they are."""
