"""Plan attachment: the one place that binds a pruned model's `save_pretrained` and `push_to_hub` to the library's
(atomic save with plan and card; one-commit upload)."""

from __future__ import annotations

import types
from pathlib import Path

from torch import nn

from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.export.hub import push_to_hub
from hf_moe_prune.export.saving import save_pruned
from hf_moe_prune.plan import PrunePlan


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
    if hasattr(config, "moe_elastic"):  # a full model loaded from an elastic checkpoint: once pruned it is not one
        del config.moe_elastic
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
    return push_to_hub(model, repo_id, **kwargs)


_push_to_hub._hf_moe_prune = True
