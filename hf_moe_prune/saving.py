"""Saving a pruned model: compact weights, patched config, tokenizer, plan JSON and model card, published atomically
(`hf_moe_prune.atomic`)."""

from __future__ import annotations

import json
import os
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .atomic import publish_folder
from .config import MoEPruneConfig
from .plan import PrunePlan
from .portable import mark_checkpoint


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


def model_sources(model: nn.Module) -> list[str]:
    """Where `model` was loaded from: its config's `name_or_path` and its plan's `base_model` (folders or Hub ids).

    A save must never replace one of these folders (nor a parent of one): the save would destroy its own source.
    """
    plan = getattr(model, "moe_pruning_plan", None)
    config = getattr(model, "config", None)
    return [s for s in (getattr(config, "name_or_path", None), getattr(plan, "base_model", None)) if s]


def save_pruned(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *args,
    tokenizer=None,
    overwrite: bool = False,
    card: dict[str, Any] | None = None,
    extra_files: Callable[[Path], None] | None = None,
    **kwargs,
) -> None:
    """Save a pruned model into `save_directory` in one step: weights, config, tokenizer, plan JSON and model card.

    Everything is written into a temporary sibling folder (`.NAME.tmp-*`), which then becomes `save_directory` in one
    rename (an atomic exchange when replacing, on Linux), so the folder is at every moment absent, the previous
    model, or the complete new one: never a model without its tokenizer, plan or card. Folders left next to it by
    interrupted saves are cleaned first (see `hf_moe_prune.atomic`).

    Args:
        model (`PreTrainedModel`): A model pruned by `hf_moe_prune.prune` (or loaded with a pruning config).
        save_directory (`str` or `os.PathLike`): Target folder; must be absent or empty unless `overwrite=True`.
        tokenizer (*optional*): Saved into the same folder (see `save_tokenizer`).
        overwrite (`bool`, *optional*, defaults to `False`): Replace an existing folder that holds only a model
            (config, weights, tokenizer, plan, card). Any other file in it (`.git`, a script, notes) makes the save
            fail before anything is written, as does a target that is the working or home directory, a filesystem
            root, the folder the model was loaded from, or a parent of one of them.
        card (`dict`, *optional*): Arguments of `hf_moe_prune.card.write_model_card` (`repo_id`, `quality`, ...).
        extra_files (`Callable[[Path], None]`, *optional*): Writes more files into the temporary folder.
        kwargs: Passed on to `PreTrainedModel.save_pretrained` (e.g. `max_shard_size`).

    Raises:
        `FileExistsError`: the target is not empty (without `overwrite`) or holds files other than a model's.
        `ValueError`: the target is a protected folder or a source of the model (or a parent of one).
    """
    from .card import write_model_card

    save = type(model).save_pretrained.__get__(model)  # transformers' own, not the wrapper on the instance

    def write(tmp: Path) -> None:
        save(str(tmp), *args, **kwargs)
        _keep_model_type(model, tmp)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        plan = getattr(model, "moe_pruning_plan", None)
        if plan is not None:
            plan.save(tmp)
            mark_checkpoint(tmp, plan)  # non-portable plans: stock transformers must refuse, never load random weights
        if extra_files is not None:
            extra_files(tmp)
        if plan is not None:
            write_model_card(tmp, plan, model, **(card or {}))

    publish_folder(save_directory, write, overwrite=overwrite, sources=model_sources(model))


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
