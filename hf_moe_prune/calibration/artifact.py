"""Calibration statistics as an artifact: gathered once, saved, decided from many times.

`CalibrationStatistics` holds every block's `LayerStats` (float64 sums, so sets of statistics add up), the routing
facts of each block (expert count, top-k, layer index, expert width) and a fingerprint of the calibration (hash of the
token rows, rows, seq_len, source, model, revision, library versions, a checksum of the routers), plus the token ids
of the held-out rows, so that a prune decided from the statistics measures itself on the same rows as a prune that
calibrated in place.

On disk (a folder): `statistics.safetensors` (one float64 tensor per block and statistic, named `BLOCK::STATISTIC`,
and the held-out rows as `held_out_rows`) and `statistics.json` (format version, fingerprint, routing facts and token
counts per block). Saving goes through the atomic folder publication (`hf_moe_prune.statistics.Statistics.save`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_moe_prune.calibration.stats import LayerStats

STATISTICS_JSON = "statistics.json"
STATISTICS_TENSORS = "statistics.safetensors"
FORMAT = 1
_HELD_OUT = "held_out_rows"
# Router weights saved in another dtype (bf16 vs fp32) sum to within this relative difference; another model's do not.
_ROUTER_RTOL = 1e-2


def rows_hash(rows: torch.Tensor | None) -> str | None:
    """SHA-256 of token rows (as int64, row-major): the same calibration data gives the same hash."""
    if rows is None:
        return None
    return hashlib.sha256(rows.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()).hexdigest()


def router_checksum(block) -> list[float] | None:
    """`[sum, sum of |w|]` of the block's router weight in float64, or None when it is not loaded (meta, streaming)."""
    try:
        weight = block.router_weight
    except (AttributeError, ValueError):
        return None
    if not isinstance(weight, torch.Tensor) or weight.device.type == "meta":
        return None
    weight = weight.detach().double()
    return [float(weight.sum()), float(weight.abs().sum())]


@dataclass
class CalibrationStatistics:
    """The statistics of one calibration pass (or a weighted combination of several), per MoE block.

    Args:
        blocks (`dict[str, LayerStats]`): Sums per block name.
        routing (`dict[str, dict]`): Per block: `layer_idx`, `num_experts`, `top_k`, `width` (intermediate neurons
            per expert, or None).
        fingerprint (`dict`): What was calibrated on what (see the module docstring); `parts` for a combination.
        held_out (`torch.Tensor`, *optional*): `[rows, seq_len]` token ids held out from the statistics, on which a
            prune decided from them measures itself.
    """

    blocks: dict[str, LayerStats]
    routing: dict[str, dict[str, Any]]
    fingerprint: dict[str, Any]
    held_out: torch.Tensor | None = None
    source: str | None = field(default=None, compare=False)  # the folder it was read from

    @property
    def names(self) -> frozenset[str]:
        """Statistics present in every block."""
        sets = [frozenset(s.tensors) for s in self.blocks.values()]
        return frozenset.intersection(*sets) if sets else frozenset()

    def describe(self) -> str:
        """One line for plans and cards: where the statistics come from and the data they sum."""
        fp = self.fingerprint
        if fp.get("parts"):
            inner = ", ".join(f"{k} (weight {v['weight']:.3g})" for k, v in fp["parts"].items())
            return f"combined statistics: {inner}"
        where = self.source or "statistics in memory"
        return f"{where} ({fp.get('rows')} rows x {fp.get('seq_len')} tokens of {fp.get('source')})"

    def check(self, blocks, model_type: str | None, names: frozenset[str] = frozenset()) -> None:
        """Refuse statistics that do not describe these blocks, or lack a statistic in `names`.

        Raises:
            `ValueError`: another family, other MoE layers, other expert counts or widths, other router weights, or
            a missing statistic; the message says what differs and how to get matching statistics.
        """
        fix = "Calibrate this model: stats = hf_moe_prune.calibrate(model, config); stats.save(path)."
        theirs = self.fingerprint.get("model_type")
        if model_type and theirs and theirs != model_type:
            raise ValueError(f"These statistics were gathered on a {theirs} model, not {model_type}. {fix}")
        ours = {b.name: b for b in blocks}
        if set(ours) != set(self.routing):
            missing = sorted(set(ours) - set(self.routing))[:3]
            extra = sorted(set(self.routing) - set(ours))[:3]
            raise ValueError(
                f"These statistics describe other MoE layers (not in them: {missing}; not in the model: {extra}). "
                + fix
            )
        for name, block in ours.items():
            facts = self.routing[name]
            if facts["num_experts"] != block.num_experts:
                raise ValueError(
                    f"{name}: the statistics count {facts['num_experts']} experts, the model has {block.num_experts} "
                    f"(another model, or one already pruned). {fix}"
                )
            saved = facts.get("router")
            current = router_checksum(block)
            if (
                saved
                and current
                and not all(
                    math.isclose(a, b, rel_tol=_ROUTER_RTOL, abs_tol=1e-6 * max(1.0, abs(b)))
                    for a, b in zip(saved, current, strict=True)
                )
            ):
                raise ValueError(
                    f"{name}: the router weights differ from those the statistics were gathered with (another "
                    f"checkpoint of the same shape, e.g. a fine-tune: {self.fingerprint.get('model')}). {fix}"
                )
        lacking = sorted(names - self.names)
        if lacking:
            raise ValueError(
                f"The statistics lack {lacking} (they hold {sorted(self.names)}). Calibrate again with "
                "hf_moe_prune.calibrate(model, config), which gathers every statistic this model's experts allow."
            )

    def to_files(self, folder: str | os.PathLike) -> None:
        """Write `statistics.safetensors` and `statistics.json` into `folder` (created if missing)."""
        from safetensors.torch import save_file

        Path(folder).mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{b}::{n}": t.detach().cpu().contiguous() for b, s in self.blocks.items() for n, t in s.tensors.items()
        }
        if self.held_out is not None:
            tensors[_HELD_OUT] = self.held_out.detach().cpu().to(torch.int64).contiguous()
        save_file(tensors, str(Path(folder) / STATISTICS_TENSORS), metadata={"format": "hf_moe_prune.statistics"})
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "routing": self.routing,
            "tokens": {b: s.tokens for b, s in self.blocks.items()},
        }
        (Path(folder) / STATISTICS_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_statistics(path: str | os.PathLike) -> CalibrationStatistics:
    """Read statistics written by `CalibrationStatistics.to_files` (a folder, or its `statistics.json`).

    Raises:
        `FileNotFoundError`: no statistics there. `ValueError`: the files are not statistics, or inconsistent.
    """
    from safetensors.torch import load_file

    folder = Path(path)
    if folder.name == STATISTICS_JSON:
        folder = folder.parent
    meta_path, tensor_path = folder / STATISTICS_JSON, folder / STATISTICS_TENSORS
    if not meta_path.is_file() or not tensor_path.is_file():
        raise FileNotFoundError(
            f"No calibration statistics at {path} (expected {STATISTICS_JSON} and {STATISTICS_TENSORS}, as written by "
            "stats.save(path) or `hf-moe-prune calibrate MODEL --output PATH`)."
        )
    try:
        meta = json.loads(meta_path.read_text())
        routing, tokens, fingerprint = meta["routing"], meta["tokens"], meta["fingerprint"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{meta_path} is not a statistics file written by hf_moe_prune: {error!r}") from error
    if not isinstance(meta.get("format"), int) or meta["format"] > FORMAT:
        raise ValueError(
            f"{meta_path} has statistics format {meta.get('format')!r}; this version reads up to {FORMAT}: upgrade "
            "hf_moe_prune."
        )
    tensors = load_file(str(tensor_path))
    held_out = tensors.pop(_HELD_OUT, None)
    blocks = {name: LayerStats(int(facts["num_experts"])) for name, facts in routing.items()}
    for key, tensor in tensors.items():
        block, _, name = key.rpartition("::")
        if block not in blocks or tensor.dtype != torch.float64 or tensor.shape[0] != blocks[block].num_experts:
            raise ValueError(f"{tensor_path}: tensor {key!r} {tuple(tensor.shape)} does not fit {meta_path}.")
        blocks[block].tensors[name] = tensor
    for name, stats in blocks.items():
        stats.tokens = int(tokens.get(name, 0))
    return CalibrationStatistics(blocks, routing, fingerprint, held_out, source=str(folder))


def combine(parts: dict[str, CalibrationStatistics], weights: dict[str, float] | None = None) -> CalibrationStatistics:
    """Weighted combination of statistics of several calibration sets of the same model.

    Each set is turned into per-token means (its sums over its own tokens) and the means are mixed with the weights
    (normalised to sum to 1), then scaled back to sums over all the tokens: weights equal to each set's share of the
    tokens give exactly the sums of calibrating on the concatenated data; equal weights (the default) let each domain
    count the same whatever its size. Held-out rows are concatenated (when all sets share a row length).
    """
    if not parts:
        raise ValueError("statistics: give at least one set of statistics to combine.")
    names = list(parts)
    weights = {name: 1.0 for name in names} if weights is None else dict(weights)
    if set(weights) != set(names):
        raise ValueError(f"statistics_weights must name exactly the statistics sets {names}, got {sorted(weights)}.")
    total_weight = sum(weights.values())
    first = parts[names[0]]
    for name in names[1:]:
        other = parts[name]
        if other.routing.keys() != first.routing.keys() or any(
            other.routing[b]["num_experts"] != first.routing[b]["num_experts"] for b in first.routing
        ):
            raise ValueError(
                f"statistics {name!r} and {names[0]!r} describe different models; combine sets of one model."
            )
    common = frozenset.intersection(*(p.names for p in parts.values()))
    blocks = {}
    for block in first.routing:
        tokens = sum(parts[n].blocks[block].tokens for n in names)
        combined = LayerStats(first.blocks[block].num_experts)
        for stat in sorted(common):
            value = None
            for name in names:
                stats = parts[name].blocks[block]
                if stats.tokens == 0:
                    continue
                term = stats[stat] * (weights[name] / total_weight * tokens / stats.tokens)
                value = term if value is None else value + term
            combined.tensors[stat] = value if value is not None else torch.zeros_like(first.blocks[block][stat])
        combined.tokens = tokens
        blocks[block] = combined
    held = [p.held_out for p in parts.values() if p.held_out is not None]
    held_out = torch.cat(held) if held and len({h.shape[1] for h in held}) == 1 else None
    fingerprint = {key: first.fingerprint.get(key) for key in ("model_type", "model", "revision", "versions")}
    fingerprint["statistics"] = sorted(common)
    fingerprint["parts"] = {
        name: {"weight": weights[name] / total_weight, **{k: parts[name].fingerprint.get(k) for k in _PART_KEYS}}
        for name in names
    }
    fingerprint["rows"] = sum(p.fingerprint.get("rows") or 0 for p in parts.values())
    fingerprint["seq_len"] = first.fingerprint.get("seq_len")
    fingerprint["tokens"] = sum(p.fingerprint.get("tokens") or 0 for p in parts.values())
    fingerprint["source"] = "combined: " + ", ".join(names)
    return CalibrationStatistics(blocks, {k: dict(v) for k, v in first.routing.items()}, fingerprint, held_out)


_PART_KEYS = ("source", "data_hash", "rows", "seq_len", "tokens")
