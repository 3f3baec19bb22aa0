"""Portability of a saved checkpoint: stock transformers loads it correctly, or refuses it loudly.

A *uniform* plan (the same number of full-width experts in every layer of a family whose config counts its routed
experts) saves a stock checkpoint that every consumer loads. Any other plan (per-layer counts, neuron widths, JetMoE)
needs `import hf_moe_prune` to rebuild its layout before the weights load. Without the library, transformers would
skip the unknown `quant_method`, build the stock layout and load it with randomly initialised experts (neuron plans:
no error at all), so such a checkpoint is *marked* in config.json, at both doors transformers opens it through:

* `model_type` becomes `"hf_moe_prune"`, registered by `import hf_moe_prune`. Without the library every `Auto*`
  class (and vLLM, Optimum, pipelines) stops at "model type `hf_moe_prune`" before reading a weight.
* every expert-count key of the decoder config (`num_experts`, `num_local_experts`, ...) holds a sentence instead of
  a number. The family's own class (`Qwen3MoeForCausalLM.from_pretrained`) validates its config fields, so it stops
  with "Field 'num_experts' expected int, got str (value: '... import hf_moe_prune ...')": the error names the fix.

The true values are kept under `moe_pruning.stock_config`; `import hf_moe_prune` registers a config class for the
marker that restores them, and `from_pretrained` restores them for the family classes too. A marked config is never
held in memory: models always carry the real (stock) config, and the mark is written only into saved folders.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

MARKER = "hf_moe_prune"
LOAD_HINT = (
    "per-layer expert layout pruned by hf_moe_prune: stock transformers would load random experts. "
    "Install hf_moe_prune (from its source) and `import hf_moe_prune` before from_pretrained"
)
_TEXT_KEYS = ("text_config", "thinker_config")


def is_portable(plan) -> bool:
    """True when stock transformers (and every runtime reading stock configs) loads `plan`'s checkpoint correctly."""
    return plan.is_uniform


def is_marked(config_dict: dict[str, Any] | None) -> bool:
    """True for the config.json dict of a checkpoint that only loads with hf_moe_prune (see the module docstring)."""
    return isinstance(config_dict, dict) and config_dict.get("model_type") == MARKER


def _count_fields(config_dict: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of every integer expert-count key in `config_dict` and its decoder sub-configs."""
    from hf_moe_prune.families import COUNT_KEYS

    fields = []
    for key in COUNT_KEYS:
        value = config_dict.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            fields.append(prefix + key)
    ffn = config_dict.get("ffn_config")  # DBRX nests its count
    if isinstance(ffn, dict) and isinstance(ffn.get("moe_num_experts"), int):
        fields.append(prefix + "ffn_config.moe_num_experts")
    for key in _TEXT_KEYS:
        if isinstance(config_dict.get(key), dict):
            fields += _count_fields(config_dict[key], f"{prefix}{key}.")
    return fields


def _get(config_dict: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        config_dict = config_dict[part]
    return config_dict


def _set(config_dict: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        config_dict = config_dict[part]
    config_dict[leaf] = value


def mark_config_dict(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The config.json dict of a non-portable checkpoint: stock fields moved under `moe_pruning.stock_config`."""
    if is_marked(config_dict):
        return config_dict
    marked = copy.deepcopy(config_dict)
    fields = _count_fields(marked)
    stock = {"model_type": marked.get("model_type"), "fields": {path: _get(marked, path) for path in fields}}
    for path in fields:
        _set(marked, path, LOAD_HINT)
    marked["model_type"] = MARKER
    marked.setdefault("moe_pruning", {})["stock_config"] = stock
    return marked


def unmark_config_dict(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The stock config.json dict behind a marked one (a copy; unmarked dicts are returned as they are).

    Raises:
        `ValueError`: the mark is damaged (no `moe_pruning.stock_config`, or a field it names is missing).
    """
    if not is_marked(config_dict):
        return config_dict
    check_config_format(config_dict)
    stock = (config_dict.get("moe_pruning") or {}).get("stock_config")
    if not isinstance(stock, dict) or not isinstance(stock.get("model_type"), str):
        raise ValueError(
            "config.json has model_type 'hf_moe_prune' but no valid moe_pruning.stock_config (the family's own "
            "model_type and expert counts): the checkpoint's config is damaged; re-save it with hf_moe_prune."
        )
    fields = stock.get("fields") or {}
    if not isinstance(fields, dict):
        raise TypeError(f"config.json moe_pruning.stock_config.fields must be an object, got {type(fields).__name__}.")
    plain = copy.deepcopy(config_dict)
    plain["model_type"] = stock["model_type"]
    for path, value in fields.items():
        if not isinstance(path, str) or isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"config.json moe_pruning.stock_config.fields[{path!r}] must be an integer count, got {value!r}."
            )
        try:
            _get(plain, path)
        except (KeyError, TypeError):
            raise ValueError(f"config.json moe_pruning.stock_config names {path!r}, which the config lacks.") from None
        _set(plain, path, value)
    del plain["moe_pruning"]["stock_config"]
    return plain


def mark_checkpoint(folder: str | os.PathLike, plan) -> None:
    """Mark the config.json saved in `folder` when `plan` is not portable, so that stock transformers refuses it."""
    if plan is None or is_portable(plan):
        return
    path = Path(folder) / "config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(mark_config_dict(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def register_marker() -> None:
    """Make `AutoConfig` (and so every `Auto*` class) read marked checkpoints: idempotent."""
    from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig

    if MARKER in CONFIG_MAPPING and getattr(CONFIG_MAPPING[MARKER], "_hf_moe_prune", False):
        return

    class MoEPrunedCheckpointConfig(PretrainedConfig):
        """Reads the config of a checkpoint marked by hf_moe_prune as its family's own config class."""

        model_type = MARKER
        _hf_moe_prune = True

        @classmethod
        def from_dict(cls, config_dict, **kwargs):
            plain = unmark_config_dict(config_dict)
            return CONFIG_MAPPING[plain["model_type"]].from_dict(plain, **kwargs)

    AutoConfig.register(MARKER, MoEPrunedCheckpointConfig, exist_ok=True)


def read_config_dict(path, hub_kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The config.json dict of the checkpoint at `path` (a folder or Hub id), or None when it cannot be resolved
    here (from_pretrained then reports that in its own words)."""
    from transformers import PretrainedConfig

    try:
        return PretrainedConfig.get_config_dict(path, **hub_kwargs)[0]
    except Exception:
        return None


def is_pruned_config(config_dict: dict[str, Any] | None) -> bool:
    """True for the config.json dict of a checkpoint that carries hf_moe_prune's per-layer layout
    (`quantization_config.quant_method == "moe_prune"`, on the config or its `text_config`)."""
    from hf_moe_prune.config import QUANT_METHOD

    if not isinstance(config_dict, dict):
        return False
    text = config_dict.get("text_config")
    quant = config_dict.get("quantization_config")
    if quant is None and isinstance(text, dict):
        quant = text.get("quantization_config")
    return isinstance(quant, dict) and quant.get("quant_method") == QUANT_METHOD


def stock_config_for(model_class, config_dict: dict[str, Any] | None):
    """The (unmarked) config of a checkpoint for `model_class`, or None when its config dict is not marked."""
    if not is_marked(config_dict):
        return None
    return model_class.config_class.from_dict(unmark_config_dict(config_dict))


def check_config_format(config_dict: dict[str, Any]) -> None:
    """Refuse a config.json whose `moe_pruning` block was written in a newer format than this library reads."""
    from hf_moe_prune.plan import check_format_version

    block = config_dict.get("moe_pruning") if isinstance(config_dict, dict) else None
    if isinstance(block, dict):
        check_format_version(block.get("format_version"), "config.json moe_pruning")
