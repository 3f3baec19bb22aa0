"""LoRA healing (`healing={"lora": {"r": 8, "alpha": 16}}`): low-rank adapters trained through `peft` in place of the
weights, then merged into them.

What gets an adapter comes from the family adapter (`find_blocks`), over the modules `train` names:

- every `nn.Linear` (routers that are linear layers, the shared experts' projections, per-expert linear layers)
  gets peft's `lora.Linear` (`LoraConfig.target_modules`);
- every other matrix those modules hold directly gets peft's `ParamWrapper` (`LoraConfig.target_parameters`, peft >=
  0.17): the fused `[E, out, in]` expert tensors of transformers 5 (`experts.gate_up_proj`, `experts.down_proj`) get
  one rank-`r` update per expert (`lora_A` maps in -> r·E, `lora_B` r·E -> out, read per expert), a router's
  `[E, hidden]` weight one rank-`r` update. The wrapper puts `W + ΔW` in place of `W` (a parametrization) while its
  module runs, so it reaches whatever the module's forward does with the tensor.

Vectors stay frozen (norm scales, biases, and the per-expert bias tables `[E, n]` beside `[E, n, m]` stacks): LoRA
adapts matrices. So do tensors reachable under two names (tied embeddings): the merged update would reach both uses,
trained through one. `all` is every `nn.Linear` of the model plus the three groups above; embeddings, convolutions and
norms stay frozen.

The base weights stay in the model's dtype and frozen; the adapters are float32 (their updates are small next to the
weights, bf16 would round them away), cast to the weights' dtype in the forward. After training `merge` folds each
update into its weight and removes every wrapper (`merge_and_unload`): the model is the plain transformers model
again, with the same parameter names and shapes as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from hf_moe_prune.adapters import find_blocks
from hf_moe_prune.healing_options import PEFT_MISSING

logger = logging.getLogger(__name__)

ADAPTER = "healing"  # the peft adapter's name while it exists


def import_peft() -> Any:
    """peft, imported on first use (an optional dependency: the `healing` extra)."""
    try:
        import peft
    except ImportError as error:
        raise ImportError(PEFT_MISSING) from error
    return peft


def lora_targets(model: torch.nn.Module, train: list[str]) -> tuple[list[str], list[str]]:
    """The full names of the `nn.Linear` modules and of the other parameters that get LoRA adapters under `train`.

    Returns:
        `(target_modules, target_parameters)`, in module order.

    Raises:
        `ValueError`: a tensor of more than 3 dimensions (no LoRA form for it), or nothing to adapt.
    """
    names = {id(module): name for name, module in model.named_modules()}
    uses: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        uses[id(param)] = uses.get(id(param), 0) + 1
    roots: list[torch.nn.Module] = []
    for block in find_blocks(model):
        if "experts" in train or "all" in train:
            roots += block.expert_modules
        if "routers" in train or "all" in train:
            roots.append(block.router)
        if "shared" in train or "all" in train:
            for name in block.adapter.shared:
                try:
                    roots.append(block.module.get_submodule(name))
                except AttributeError:
                    continue
    if "all" in train:  # every linear layer besides: attention, dense MLPs, the LM head when untied
        roots += [m for m in model.modules() if _plain_linear(m)]
    modules: dict[str, None] = {}
    params: dict[str, None] = {}
    for root in roots:
        for name, module in root.named_modules(prefix=names[id(root)]):
            if _plain_linear(module):
                if uses[id(module.weight)] == 1:
                    modules[name] = None
                continue
            direct = dict(module.named_parameters(recurse=False))
            stacks = {p.shape[0] for p in direct.values() if p.dim() == 3}
            for key, param in direct.items():
                if not param.is_floating_point() or uses[id(param)] > 1:
                    continue
                if param.dim() > 3:
                    raise ValueError(
                        f"healing.lora: {name}.{key} has shape {list(param.shape)}; LoRA adapts [out, in] matrices "
                        "and [experts, out, in] stacks only. Heal this family without `lora`, or leave it out of "
                        "`train`."
                    )
                if param.dim() == 3 or (param.dim() == 2 and param.shape[0] not in stacks):
                    params[f"{name}.{key}"] = None
    # peft cannot wrap a parameter of a module inside another one it wraps (Ernie-4.5's `gate.moe_statics` bias under
    # the router's own weight): such a tensor stays frozen
    owners = {key.rpartition(".")[0] for key in params}
    kept = [key for key in params if not any(key.rpartition(".")[0].startswith(f"{o}.") for o in owners)]
    if not modules and not kept:
        raise ValueError(f"healing.lora: the model has no matrices to adapt under train={train}.")
    return list(modules), kept


def _plain_linear(module: torch.nn.Module) -> bool:
    """An `nn.Linear` whose forward is the stock one: peft's `lora.Linear` adds its update to that forward's output.
    Routers that subclass `nn.Linear` with a forward of their own (Llama-4, PhiMoE: they return a tuple) have their
    weight adapted as a parameter instead."""
    return isinstance(module, torch.nn.Linear) and type(module).forward is torch.nn.Linear.forward


def check_lora(model: torch.nn.Module, options: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Refuse a LoRA request this model cannot take, before anything changes: the targets `lora_targets` finds, and
    dropout on tensors adapted as parameters (peft's `ParamWrapper` has none: the update is folded into the tensor,
    there is no separate input to drop).

    Returns:
        `(target_modules, target_parameters)`.
    """
    modules, params = lora_targets(model, options["train"])
    if options["lora"]["dropout"] and params:
        raise ValueError(
            f"healing.lora.dropout={options['lora']['dropout']} applies to nn.Linear adapters only, but "
            f"{params[0]} (and {len(params) - 1} more) is a tensor peft adapts without dropout: set dropout 0, or "
            "train only modules that are linear layers."
        )
    if any(isinstance(module, import_peft().tuners.tuners_utils.BaseTunerLayer) for module in model.modules()):
        raise ValueError("healing.lora: the model already carries peft adapters; merge or remove them first.")
    return modules, params


class LoraHealing:
    """peft LoRA adapters on `model` (in place): train `parameters`, then `merge()` (or `discard()` on failure).

    Args:
        model (`PreTrainedModel`): The pruned model; its weights are frozen while the adapters exist.
        options (`dict`): Normalised `healing` options with a `lora` dict.
        probe (`dict`, *optional*): Keyword inputs of one short forward run once the adapters are attached: a model
            that fails under the wrappers (DBRX's experts read their `mlp`'s tensors from outside it, through the
            wrapper that replaced it) is refused here, the wrappers removed, before any training.
    """

    def __init__(self, model: torch.nn.Module, options: dict[str, Any], probe: dict[str, Any] | None = None):
        peft = import_peft()
        modules, params = check_lora(model, options)
        lora = options["lora"]
        config = peft.LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=modules,
            target_parameters=params or None,
            bias="none",
        )
        self.model = model
        self.targets = {"modules": len(modules), "parameters": len(params)}
        self.version = peft.__version__
        self.flags = [(p, p.requires_grad) for p in model.parameters()]  # peft freezes every weight
        self.tuner = peft.LoraModel(model, config, ADAPTER)
        self.attached = True
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
        self.parameters: list[torch.nn.Parameter] = []
        self.dropouts: list[torch.nn.Module] = []
        for layer in self.layers.values():
            for factors in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]):
                factors.float()  # float32 adapters over low-precision weights (peft made them the weights' dtype)
                self.parameters += list(factors.parameters())
            self.dropouts.append(layer.lora_dropout[ADAPTER])
        # which adapters a training forward reached (the probe counts as one; the measurements run without grad): a
        # wrapper on a tensor read outside its module's forward never runs
        self.reached: set[str] = set()
        self.hooks = [layer.register_forward_pre_hook(self._reach(name)) for name, layer in self.layers.items()]
        if probe is not None:
            self._probe(probe)

    def _reach(self, name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            if torch.is_grad_enabled():
                self.reached.add(name)

        return hook

    def _probe(self, inputs: dict[str, Any]) -> None:
        try:
            with torch.enable_grad():  # counted as a training forward; nothing runs backward
                self.model(**inputs, use_cache=False)
        except Exception as error:
            self.discard()
            raise ValueError(
                f"healing.lora: the model does not run with peft's LoRA wrappers ({type(error).__name__}: {error}), "
                "as when a family's code reads an adapted module's tensors from outside that module (DBRX's experts "
                "read their `mlp`'s). Heal without `lora`, or leave that group out of `train`."
            ) from error

    @contextmanager
    def dropout(self) -> Iterator[None]:
        """LoRA dropout on for one training step (the model runs in eval mode: no dropout of its own, fixed routing;
        the held-out measurements run without it)."""
        for module in self.dropouts:
            module.train()
        try:
            yield
        finally:
            for module in self.dropouts:
                module.eval()

    def merge(self) -> None:
        """Fold every update into its weight (in the weight's dtype) and remove every peft wrapper."""
        self._detach(merge=True)

    def discard(self) -> None:
        """Remove every peft wrapper, the weights unchanged (nothing once merged)."""
        self._detach(merge=False)

    def _detach(self, merge: bool) -> None:
        if not self.attached:
            return
        for hook in self.hooks:
            hook.remove()
        if merge:
            self.tuner.merge_and_unload()
        else:
            self.tuner.unload()
        for param, flag in self.flags:
            param.requires_grad_(flag)
        self.attached = False

    def record(self, options: dict[str, Any]) -> dict[str, Any]:
        """`PrunePlan.healing["lora"]`: the adapters' settings and what they covered."""
        record = {
            **options["lora"],
            "target_modules": self.targets["modules"],
            "target_parameters": self.targets["parameters"],
            "adapter_parameters": sum(p.numel() for p in self.parameters),
            "peft": self.version,
        }
        # adapters no forward ran (a per-expert linear layer no token was routed to, a router whose weight the model
        # reads without calling it): left at zero, they changed nothing
        unreached = [name for name in self.layers if name not in self.reached]
        if unreached:
            logger.warning("healing.lora: no forward reached the adapters of %s; they changed nothing.", unreached)
            record["unreached"] = unreached
        return record
