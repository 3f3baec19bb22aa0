"""Saving a pruned model: compact weights, patched config, tokenizer, plan JSON and model card, published atomically
(`hf_moe_prune.export.atomic`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from hf_moe_prune.export.atomic import publish_folder
from hf_moe_prune.export.portable import mark_checkpoint


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
    interrupted saves are cleaned first (see `hf_moe_prune.export.atomic`).

    Args:
        model (`PreTrainedModel`): A model pruned by `hf_moe_prune.prune` (or loaded with a pruning config).
        save_directory (`str` or `os.PathLike`): Target folder; must be absent or empty unless `overwrite=True`.
        tokenizer (*optional*): Saved into the same folder (see `save_tokenizer`).
        overwrite (`bool`, *optional*, defaults to `False`): Replace an existing folder that holds only a model
            (config, weights, tokenizer, plan, card). Any other file in it (`.git`, a script, notes) makes the save
            fail before anything is written, as does a target that is the working or home directory, a filesystem
            root, the folder the model was loaded from, or a parent of one of them.
        card (`dict`, *optional*): Arguments of `hf_moe_prune.export.card.write_model_card` (`repo_id`, `quality`,
            ...).
        extra_files (`Callable[[Path], None]`, *optional*): Writes more files into the temporary folder.
        kwargs: Passed on to `PreTrainedModel.save_pretrained` (e.g. `max_shard_size`).

    Raises:
        `FileExistsError`: the target is not empty (without `overwrite`) or holds files other than a model's.
        `ValueError`: the target is a protected folder or a source of the model (or a parent of one).
    """
    from hf_moe_prune.export.card import write_model_card

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
