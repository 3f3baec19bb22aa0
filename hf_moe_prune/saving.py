"""Saving a pruned model: compact weights, patched config, plan JSON and model card, written atomically."""

from __future__ import annotations

import json
import os
import shutil
import types
import uuid
from pathlib import Path

from torch import nn

from .config import MoEPruneConfig
from .plan import PrunePlan


def attach_plan(model: nn.Module, plan: PrunePlan) -> None:
    """Record `plan` on the model and its config; make `model.save_pretrained` write everything atomically, and
    `model.push_to_hub` publish everything (card included) in one commit.

    A uniform plan leaves a stock config (the family's expert-count keys already patched) plus a `moe_pruning`
    metadata block. A non-uniform plan also needs `quantization_config` (`quant_method="moe_prune"` with the per-layer
    counts) so that the quantizer can shrink the skeleton when the checkpoint is loaded again.
    """
    model.moe_pruning_plan = plan
    config = model.config
    config.moe_pruning = plan.summary()
    if plan.is_uniform:
        if isinstance(getattr(config, "quantization_config", None), MoEPruneConfig):
            del config.quantization_config
    else:
        widths = plan.expert_widths or None
        reload = MoEPruneConfig(
            **{**plan.config, "experts_per_layer": plan.experts_per_layer, "expert_widths": widths}
        )
        config.quantization_config = reload
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None and isinstance(quantizer.quantization_config, MoEPruneConfig):
            quantizer.quantization_config = reload
    # Bound methods, not closures: `copy.deepcopy(model)` rebinds them to the copy.
    if not getattr(model.save_pretrained, "_hf_moe_prune", False):
        model.save_pretrained = types.MethodType(_save_pretrained, model)
    if not getattr(model.push_to_hub, "_hf_moe_prune", False):
        # A bound method, not a closure: `copy.deepcopy(model)` then rebinds it to the copy.
        model.push_to_hub = types.MethodType(_push_to_hub, model)


def _save_pretrained(
    model: nn.Module, save_directory, *args, overwrite: bool = False, push_to_hub: bool = False, **kwargs
) -> None:
    """`save_pretrained` of a pruned model: atomic, with plan and card; see `hf_moe_prune.save_pruned`."""
    # transformers' own push would upload the folder before the plan and card are in it: push ours after.
    hub_keys = ("repo_id", "commit_message", "create_pr", "private", "token", "revision")
    hub_kwargs = {key: kwargs.pop(key) for key in hub_keys if key in kwargs} if push_to_hub else {}
    save_pruned(model, save_directory, *args, overwrite=overwrite, **kwargs)
    if push_to_hub:
        repo_id = hub_kwargs.pop("repo_id", None) or Path(save_directory).name
        model.push_to_hub(repo_id, max_shard_size=kwargs.get("max_shard_size", "5GB"), **hub_kwargs)


_save_pretrained._hf_moe_prune = True


def _push_to_hub(model: nn.Module, repo_id: str, **kwargs):
    """Upload this pruned model, its plan and model card in one commit; see `hf_moe_prune.push_to_hub`."""
    from .hub import push_to_hub

    return push_to_hub(model, repo_id, **kwargs)


_push_to_hub._hf_moe_prune = True


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is a file; choose a folder path for the pruned model.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{target} exists and is not empty; nothing was written. Choose a new folder, or pass overwrite=True "
            "(the old content is replaced only after the new save has fully succeeded)."
        )


def save_pruned(model: nn.Module, save_directory: str | os.PathLike, *args, overwrite: bool = False, **kwargs) -> None:
    """Save a pruned model into `save_directory` atomically: weights, config, plan JSON and model card.

    Everything is first written into a temporary sibling folder, which then replaces the target in one rename, so an
    interrupted save never leaves a half-written model behind.

    Args:
        model (`PreTrainedModel`): A model pruned by `hf_moe_prune.prune` (or loaded with a pruning config).
        save_directory (`str` or `os.PathLike`): Target folder; must be absent or empty unless `overwrite=True`.
        overwrite (`bool`, *optional*, defaults to `False`): Replace an existing non-empty folder.
        kwargs: Passed on to `PreTrainedModel.save_pretrained` (e.g. `max_shard_size`).
    """
    from .card import write_model_card

    target = Path(save_directory).absolute()
    _check_target(target, overwrite)
    save = type(model).save_pretrained.__get__(model)  # transformers' own, not the wrapper on the instance
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        save(str(tmp), *args, **kwargs)
        _keep_model_type(model, tmp)
        plan = getattr(model, "moe_pruning_plan", None)
        if plan is not None:
            plan.save(tmp)
            write_model_card(tmp, plan, model)
        _replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _keep_model_type(model: nn.Module, folder: Path) -> None:
    """Write the checkpoint's own `model_type` into config.json when transformers would write its class's.

    A family transformers builds with another family's classes (`sarvam_moe` with GLM-4-MoE's), loaded through that
    class (`Glm4MoeForCausalLM.from_pretrained`), gets the other family's config class with `model_type` set on the
    instance; transformers 5.24 saves the weights under the checkpoint's own key names but writes the class's
    `model_type`, and the folder then reloads with those weights missing (randomly initialized attention, measured).
    """
    from transformers import CONFIG_MAPPING

    config = getattr(model, "config", None)
    own = getattr(config, "__dict__", {}).get("model_type")
    path = folder / "config.json"
    if not own or own == type(config).model_type or own not in CONFIG_MAPPING or not path.exists():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("model_type") != own:
        data["model_type"] = own
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _replace(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def save_tokenizer(tokenizer, save_directory: str | os.PathLike) -> None:
    """Save `tokenizer` so that transformers 4.57 loads it too (the ONNX Runtime exporter's window).

    transformers 5 writes `"tokenizer_class": "TokenizersBackend"` for fast tokenizers, a class 4.57 does not know;
    the same tokenizer file loads there as `PreTrainedTokenizerFast`.
    """
    tokenizer.save_pretrained(save_directory)
    path = Path(save_directory) / "tokenizer_config.json"
    if path.exists():
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("tokenizer_class") == "TokenizersBackend":
            data["tokenizer_class"] = "PreTrainedTokenizerFast"
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
