"""`trust_remote_code` files for a non-uniform checkpoint: a config and model class that build each layer with its own
expert count, so that transformers loads it without this library (`push_to_hub(..., remote_code=True)`)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from hf_moe_prune.export.portable import unmark_config_dict
from hf_moe_prune.plan import PrunePlan

_CONFIG_CODE = '''"""{config} of a model whose MoE layers keep different numbers of routed experts.

Per-layer counts are in `experts_per_layer`. Written by hf_moe_prune; loading needs only transformers:
`from_pretrained(repo, trust_remote_code=True)`.
"""

from transformers import {config}


class Pruned{config}({config}):
    pass
'''

_MODELING_CODE = '''"""{model} whose MoE layers keep different numbers of routed experts, pruned by hf_moe_prune.

Loading needs only transformers and torch: `AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)`.
The stock model is built from the config, then, before the weights load, every expert tensor listed in
`config.pruned_tensors` is cut to its pruned size along its expert axis, and the expert counts the modules keep as
attributes are set from `config.pruned_attributes`. The checkpoint holds the kept experts numbered from 0.
"""

from torch import nn
from transformers import {model}

from .configuration_pruned import Pruned{config}


class Pruned{model}({model}):
    config_class = Pruned{config}

    @classmethod
    def is_custom_code(cls) -> bool:
        # transformers skips the family's checkpoint key conversions (renames, expert fusion) for custom code, but
        # this is the stock modeling with other expert counts: the checkpoint needs exactly those conversions.
        return False

    def __init__(self, config):
        super().__init__(config)
        for name, (dim, size) in config.pruned_tensors.items():
            module_name, _, attr = name.rpartition(".")
            module = self.get_submodule(module_name)
            tensor = getattr(module, attr)
            new = tensor.data.narrow(dim, 0, size).contiguous()
            if attr in module._parameters:
                module._parameters[attr] = nn.Parameter(new, requires_grad=tensor.requires_grad)
            else:
                module._buffers[attr] = new
        for name, values in config.pruned_attributes.items():
            module = self.get_submodule(name)
            for key, value in values.items():
                setattr(module, key, value)
'''


def check_remote_code(model) -> None:
    import transformers

    model_class, config_class = type(model).__name__, type(model.config).__name__
    if not model_class.endswith("ForCausalLM") or not hasattr(transformers, model_class):
        raise ValueError(
            f"remote_code=True publishes a *ForCausalLM model of a transformers family; got {model_class}. Load the "
            "model with AutoModelForCausalLM, or publish without remote_code (loading then needs hf_moe_prune)."
        )
    if not hasattr(transformers, config_class):
        raise ValueError(f"remote_code=True needs a transformers config class; {config_class} is not one.")


def _pruned_layout(model) -> tuple[dict[str, list[int]], dict[str, dict[str, int]]]:
    """How `model` differs from the stock model its config builds: `{tensor: [expert axis, size]}` and
    `{module: {int attribute: value}}`. Found by building that stock model on the meta device and comparing, so the
    published code needs no knowledge of the family's layout."""
    with torch.device("meta"):
        stock = type(model)(copy.deepcopy(model.config))
    pruned = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    tensors = {}
    for name, tensor in [*stock.named_parameters(), *stock.named_buffers()]:
        if pruned[name].shape != tensor.shape:
            dims = [d for d, (a, b) in enumerate(zip(tensor.shape, pruned[name].shape)) if a != b]
            if len(dims) != 1 or pruned[name].ndim != tensor.ndim:
                raise ValueError(
                    f"remote_code=True: {name} has shape {tuple(pruned[name].shape)}, not a cut of the stock "
                    f"{tuple(tensor.shape)} along one axis (a quantized model?); publish without remote_code."
                )
            tensors[name] = [dims[0], int(pruned[name].shape[dims[0]])]
    modules, attributes = dict(model.named_modules()), {}
    for name, module in stock.named_modules():
        changed = {
            key: value
            for key, value in vars(modules[name]).items()
            if type(value) is int and vars(module).get(key, value) != value
        }
        if changed:
            attributes[name] = changed
    return tensors, attributes


def write_remote_code(folder: str | os.PathLike, model, plan: PrunePlan) -> None:
    """Make the saved non-uniform checkpoint in `folder` loadable with `trust_remote_code=True` and no hf_moe_prune.

    Writes `configuration_pruned.py` and `modeling_pruned.py` (subclasses of the family's config and `*ForCausalLM`
    that cut each expert tensor to its pruned size), and points `auto_map` at them in config.json.
    `quantization_config` is dropped: its `quant_method` is unknown to transformers and other runtimes without
    hf_moe_prune.
    """
    folder = Path(folder)
    names = {"model": type(model).__name__, "config": type(model.config).__name__}
    tensors, attributes = _pruned_layout(model)
    (folder / "configuration_pruned.py").write_text(_CONFIG_CODE.format(**names), encoding="utf-8")
    (folder / "modeling_pruned.py").write_text(_MODELING_CODE.format(**names), encoding="utf-8")
    config_file = folder / "config.json"
    # The remote code is the loader here: the stock fields go back (see `hf_moe_prune.export.portable`).
    config = unmark_config_dict(json.loads(config_file.read_text(encoding="utf-8")))
    config.pop("quantization_config", None)
    config["experts_per_layer"] = plan.experts_per_layer  # for readers; the code uses the two entries below
    config["pruned_tensors"] = tensors
    config["pruned_attributes"] = attributes
    config["architectures"] = [f"Pruned{names['model']}"]
    config["auto_map"] = {
        "AutoConfig": f"configuration_pruned.Pruned{names['config']}",
        "AutoModelForCausalLM": f"modeling_pruned.Pruned{names['model']}",
    }
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
