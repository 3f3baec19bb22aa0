"""The `statistics` option of `MoEPruneConfig`, checked before anything is read (a leaf: the config imports it).

`statistics=` is a folder written by `Statistics.save` (or `hf-moe-prune calibrate`), a statistics object, or a dict
`{name: folder or object}` of several calibration sets combined with `statistics_weights={name: weight}` (equal
weights by default). The files are read, combined and checked against the model by `hf_moe_prune.pipeline`.
"""

from __future__ import annotations

import numbers
import os
from typing import Any


def _is_one(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike)) or hasattr(value, "blocks") and hasattr(value, "fingerprint")


def check_statistics_option(value: Any, weights: Any) -> None:
    """Raise a `TypeError`/`ValueError` naming the problem when `statistics` / `statistics_weights` are malformed."""
    if value is None:
        if weights is not None:
            raise ValueError("statistics_weights weighs several sets of `statistics`; give `statistics` too.")
        return
    if isinstance(value, dict):
        if not value or not all(isinstance(k, str) and _is_one(v) for k, v in value.items()):
            raise TypeError(
                "statistics as a dict combines several calibration sets: {name: folder or statistics object}, got "
                f"{value!r}."
            )
    elif not _is_one(value):
        raise TypeError(
            "statistics must be a folder written by stats.save(path) / `hf-moe-prune calibrate`, the object "
            f"hf_moe_prune.calibrate returned, or a dict of them; got {type(value).__name__}."
        )
    if weights is None:
        return
    if not isinstance(value, dict):
        raise ValueError("statistics_weights weighs several sets: give `statistics` as a dict {name: folder}.")
    if not isinstance(weights, dict) or set(weights) != set(value):
        raise ValueError(f"statistics_weights must give a weight to each of {sorted(value)}, got {weights!r}.")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not weight >= 0:
            raise ValueError(f"statistics_weights[{name!r}] must be a number >= 0, got {weight!r}.")
    if not sum(weights.values()) > 0:
        raise ValueError("statistics_weights must not all be 0.")


def describe_statistics(value: Any) -> Any:
    """What `MoEPruneConfig.to_dict` records for `statistics`: folders as strings, objects by their description."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {name: describe_statistics(v) for name, v in value.items()}
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return value.describe()
