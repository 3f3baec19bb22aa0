"""Validation of pruning plans as read from JSON, and the plan format version: a leaf module. The checks of a plan
against a model's blocks, and of a pruned checkpoint's metadata, are in `hf_moe_prune.pipeline.checks`.

A plan file and a checkpoint's `quantization_config` may come from anyone (a Hub repository, a hand-edited JSON file),
so every field is checked for type, range and size here, and every count is bounded by the model's own tensor shapes
before any `range(count)` is built from it. Errors name the field as a path into the file (`blocks[3].kept[1]`,
`quantization_config.experts_per_layer['model.layers.0.mlp']`): `TypeError` for a wrong type, `ValueError` for a
wrong value.

Unknown keys are refused with the closest valid name (a typo must not be silently ignored), except in a plan whose
`versions["hf_moe_prune"]` is newer than the installed library: such keys are assumed to be fields a later version
added, and are ignored with a warning, as `MoEPruneConfig` keeps unknown keys of newer versions readable.
"""

from __future__ import annotations

import logging
import math
import reprlib
from collections.abc import Iterable, Mapping
from typing import Any

from hf_moe_prune.registry import closest

logger = logging.getLogger(__name__)

# Generous upper bounds for fields that only the file itself bounds (the largest MoE models have ~100 layers, ~400
# experts per layer and expert widths of a few thousand neurons); checked before a plan is used or stored.
MAX_BLOCKS = 4096
MAX_LAYER_INDEX = 1 << 20
MAX_EXPERTS = 1 << 16
MAX_WIDTH = 1 << 20
MAX_DEPTH = 32  # nesting of the free-form fields (calibration, config, neuron_schedule)

_PLAN_REQUIRED = ("method", "model_type", "blocks")
_BLOCK_REQUIRED = ("name", "layer_idx", "num_experts", "kept")
_FREE_FORM = ("calibration", "config", "neuron_schedule", "search", "healing")

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60


def _show(value: Any) -> str:
    """A short `repr` (bounded in time and length even for huge or deeply nested values)."""
    return _repr.repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(value: Any, path: str, what: str, low: int, high: int) -> int:
    if not _is_int(value):
        raise TypeError(f"{path}: expected {what}, got {_show(value)}")
    if not low <= value <= high:
        raise ValueError(f"{path}: expected {what} in [{low}, {high}], got {value}")
    return value


def _check_type(value: Any, types: type | tuple[type, ...], path: str, what: str, optional: bool = False) -> None:
    if not (isinstance(value, types) or (optional and value is None)):
        raise TypeError(f"{path}: expected {what}{' or null' if optional else ''}, got {_show(value)}")


def _check_number(value: Any, path: str, low: float = -math.inf) -> None:
    """None, or a finite int/float (JSON has no NaN or infinity) of at least `low`."""
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{path}: expected a number or null, got {_show(value)}")
    if not math.isfinite(value) or value < low:
        raise ValueError(
            f"{path}: expected a finite number" + (f" >= {low}" if low > -math.inf else "") + f", got {value}"
        )


# Version of the saved plan and of config.json's `moe_pruning` block. Raise it when a change means an older library
# would read a checkpoint wrongly; readers refuse a newer version (`check_format_version`), older ones still load.
FORMAT_VERSION = 1


def check_format_version(value, where: str) -> None:
    """Refuse a plan or `moe_pruning` block written in a newer format than this library reads.

    Args:
        value: The `format_version` found (None or absent: written before versions existed, read as version 1).
        where (`str`): What holds it, for the message (a file path, `config.json moe_pruning`).

    Raises:
        `TypeError`: the version is not an int. `ValueError`: it is newer than `FORMAT_VERSION`, or below 1.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: format_version must be an int, got {value!r}.")
    if value > FORMAT_VERSION:
        raise ValueError(
            f"{where}: written in pruning format {value} by a newer hf_moe_prune; this one (format {FORMAT_VERSION}) "
            "would read it wrongly. Upgrade: pip install -U hf-moe-prune."
        )
    if value < 1:
        raise ValueError(f"{where}: format_version must be at least 1, got {value}.")


def _written_by_newer_version(data: Mapping) -> str | None:
    """The `hf_moe_prune` version that wrote the plan when it is newer than this one, else None."""
    from packaging.version import InvalidVersion, Version

    from hf_moe_prune.version import __version__

    versions = data.get("versions")
    written = versions.get("hf_moe_prune") if isinstance(versions, Mapping) else None
    try:
        return written if isinstance(written, str) and Version(written) > Version(__version__) else None
    except InvalidVersion:
        return None


def _check_keys(data: Mapping, allowed: tuple[str, ...], required: tuple[str, ...], path: str, newer: str | None):
    for key in data:
        if not isinstance(key, str):
            raise TypeError(f"{path}: keys must be strings, got {_show(key)}")
        if key in allowed:
            continue
        if newer:  # a field a later version added: readable here, without it
            logger.warning("%s: ignoring key %r of hf_moe_prune %s (newer than this one).", path, key, newer)
            continue
        close = closest(key, allowed)
        hint = f"did you mean {close!r}?" if close else f"valid keys are {', '.join(allowed)}."
        raise ValueError(f"{path}: unknown key {_show(key)}; {hint}")
    for key in required:
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}.")


def _check_json(value: Any, path: str) -> None:
    """A free-form field holds JSON values nested at most `MAX_DEPTH` deep (iteratively: no recursion limit)."""
    stack = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels.")
        if isinstance(item, Mapping):
            for key, child in item.items():
                _check_type(key, str, where, "string keys")
                stack.append((child, f"{where}.{key}", depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
        elif not (item is None or isinstance(item, (str, bool, int, float))):
            raise TypeError(f"{where}: expected a JSON value, got {_show(item)}")


def _neuron_expert(key: Any, path: str) -> int:
    """A `neurons` key as an expert index: an int, or its decimal string (JSON object keys are strings)."""
    if isinstance(key, str) and key.isascii() and key.isdigit() and str(int(key)) == key:
        return int(key)
    if _is_int(key):
        return key
    raise TypeError(f"{path}: expected an int expert index as key, got {_show(key)}")


def check_block_dict(
    block: Any, path: str, block_fields: Iterable[str], newer: str | None = None, scores: bool = True
) -> None:
    """Check one block of a plan (its JSON form, or a `BlockPlan`'s fields with `scores=False`)."""
    _check_type(block, Mapping, path, "a block object")
    _check_keys(block, tuple(block_fields), _BLOCK_REQUIRED, path, newer)
    _check_type(block["name"], str, f"{path}.name", "a module name string")
    _check_int(block["layer_idx"], f"{path}.layer_idx", "an int layer index", 0, MAX_LAYER_INDEX)
    num = _check_int(block["num_experts"], f"{path}.num_experts", "an int expert count", 1, MAX_EXPERTS)
    kept = block["kept"]
    _check_type(kept, (list, tuple), f"{path}.kept", "a list of expert indices")
    if not 1 <= len(kept) <= num:
        raise ValueError(
            f"{path}.kept: expected between 1 and num_experts={num} expert indices, got {len(kept)}; every MoE layer "
            "keeps at least its top-k experts."
        )
    seen = set()
    for i, expert in enumerate(kept):
        if not _is_int(expert):
            raise TypeError(f"{path}.kept[{i}]: expected an int expert index, got {_show(expert)}")
        if not 0 <= expert < num:
            raise ValueError(f"{path}.kept[{i}]: expert index {expert} is out of range [0, {num}).")
        if expert in seen:
            raise ValueError(f"{path}.kept[{i}]: expert {expert} is listed twice.")
        seen.add(expert)
    if scores and block.get("scores") is not None:
        _check_type(block["scores"], (list, tuple), f"{path}.scores", "a list of numbers", optional=True)
        if len(block["scores"]) != num:
            raise ValueError(f"{path}.scores: expected one score per expert ({num}), got {len(block['scores'])}.")
        for i, score in enumerate(block["scores"]):
            _check_number(score, f"{path}.scores[{i}]")
    width = block.get("intermediate_size")
    if width is not None:
        _check_int(width, f"{path}.intermediate_size", "an int width", 1, MAX_WIDTH)
    neurons = block.get("neurons")
    _check_type(neurons, Mapping, f"{path}.neurons", "an object {expert: neuron indices}", optional=True)
    if neurons and width is None:
        raise ValueError(f"{path}.intermediate_size: required with `neurons` (the experts' width before pruning).")
    experts = set()
    for key, chosen in (neurons or {}).items():
        where = f"{path}.neurons[{_show(key)}]"
        expert = _neuron_expert(key, where)
        if expert not in seen:
            raise ValueError(f"{where}: expert {expert} has a neuron list but is not in kept.")
        if expert in experts:
            raise ValueError(f"{where}: expert {expert} is listed twice.")
        experts.add(expert)
        _check_type(chosen, (list, tuple), where, "a list of neuron indices")
        if not 1 <= len(chosen) <= width:
            raise ValueError(f"{where}: expected between 1 and intermediate_size={width} neurons, got {len(chosen)}.")
        bad = next((i for i, n in enumerate(chosen) if not _is_int(n)), None)
        if bad is not None:
            raise TypeError(f"{where}[{bad}]: expected an int neuron index, got {_show(chosen[bad])}")
        if min(chosen) < 0 or max(chosen) >= width or len(set(chosen)) != len(chosen):
            raise ValueError(f"{where}: neuron indices must be distinct and in [0, {width}).")


def check_quality(quality: Any, path: str = "quality") -> None:
    """Check a plan's self-measurement block: null, or an object of JSON values whose known numbers are in range
    (`kl`, perplexities >= 0, `top1_agreement` in [0, 1], counts non-negative ints, texts strings)."""
    _check_type(quality, Mapping, path, "an object", optional=True)
    if quality is None:
        return
    _check_json(quality, path)
    for key in ("kl", "top1_agreement", "ppl_before", "ppl_after"):
        _check_number(quality.get(key), f"{path}.{key}", low=0)
    if (quality.get("top1_agreement") or 0) > 1:
        raise ValueError(f"{path}.top1_agreement: expected a share in [0, 1], got {quality['top1_agreement']}")
    for key in ("rows", "seq_len", "tokens", "top_k"):
        if quality.get(key) is not None:
            _check_int(quality[key], f"{path}.{key}", "a non-negative int", 0, 1 << 62)
    for key in ("mode", "what", "skipped"):
        _check_type(quality.get(key), str, f"{path}.{key}", "a string", optional=True)


def check_plan_dict(data: Any, plan_fields: Iterable[str], block_fields: Iterable[str]) -> None:
    """Check the structure and types of a plan as read from JSON, before a `PrunePlan` is built from it.

    Args:
        data (`Any`): The parsed JSON of a `moe_pruning_plan.json`.
        plan_fields, block_fields (`Iterable[str]`): The keys a plan and a block may hold (`PrunePlan`'s and
            `BlockPlan`'s fields; `PrunePlan.from_dict` passes them).

    Raises:
        `TypeError`: a field has the wrong type (the message names it, e.g. `blocks[3].kept[1]`).
        `ValueError`: a field has a wrong value, a size out of bounds, or the key is unknown (with the closest name).
    """
    _check_type(data, Mapping, "plan", "a JSON object")
    check_format_version(data.get("format_version"), "format_version")  # before anything a newer format may change
    newer = _written_by_newer_version(data)
    _check_keys(data, tuple(plan_fields), _PLAN_REQUIRED, "plan", newer)
    for key in ("method", "model_type"):
        _check_type(data[key], str, key, "a string")
    _check_type(data.get("base_model"), str, "base_model", "a string", optional=True)
    _check_number(data.get("ratio"), "ratio")
    _check_number(data.get("stats_seconds"), "stats_seconds", low=0)
    if data.get("unit", "expert") not in ("expert", "neuron"):
        raise ValueError(f"unit: expected 'expert' or 'neuron', got {_show(data['unit'])}")
    for key in _FREE_FORM:
        if key in data:
            _check_type(data[key], Mapping, key, "an object", optional=key in ("neuron_schedule", "search", "healing"))
            _check_json(data[key], key)
    check_quality(data.get("quality"))
    for key in ("versions", "parameters"):
        _check_type(data.get(key, {}), Mapping, key, "an object")
        for name, value in data.get(key, {}).items():
            if key == "versions":
                _check_type(value, str, f"{key}.{name}", "a version string")
            else:
                _check_int(value, f"{key}.{name}", "an int parameter count", 0, 1 << 62)
    blocks = data["blocks"]
    _check_type(blocks, (list, tuple), "blocks", "a list of block objects")
    if not 1 <= len(blocks) <= MAX_BLOCKS:
        raise ValueError(f"blocks: expected between 1 and {MAX_BLOCKS} MoE blocks, got {len(blocks)}.")
    names = set()
    for i, block in enumerate(blocks):
        check_block_dict(block, f"blocks[{i}]", block_fields, newer)
        if block["name"] in names:
            raise ValueError(f"blocks[{i}].name: block {block['name']!r} is listed twice.")
        names.add(block["name"])
