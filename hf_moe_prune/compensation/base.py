"""What every compensator receives, and the checks run before calibration."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hf_moe_prune.registries import COMPENSATIONS


@dataclass
class CompensationContext:
    """What a compensator may use for one block: statistics, calibration inputs `[tokens, hidden]`, options."""

    stats: object = None
    inputs: torch.Tensor | None = None
    options: dict = field(default_factory=dict)


def needs_inputs(name: str) -> bool:
    """Whether compensation `name` needs a sample of each block's calibration inputs."""
    return COMPENSATIONS.get(name).needs_inputs


def check_compensation(name: str, blocks) -> None:
    """Raise before any calibration when compensation `name` cannot run on one of `blocks` (its `check`)."""
    check = COMPENSATIONS.get(name).check
    for block in blocks if check is not None else ():
        check(block)
