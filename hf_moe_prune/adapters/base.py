"""Where the routed experts of a MoE family live, as data, and how to find them in a model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from hf_moe_prune.registry import Registry

if TYPE_CHECKING:
    from torch import nn

ADAPTERS: Registry[MoEAdapter] = Registry(
    "model family",
    hint="To add a family, write one small file hf_moe_prune/adapters/<model_type>.py (see docs/adding_a_family.md).",
)


# Families of transformers whose configs count experts but that hf_moe_prune does not prune, and why.
UNSUPPORTED: dict[str, str] = {
    "nllb-moe": (
        "transformers' NllbMoeExperts one-hot-encodes the router's already one-hot top-1 mask, so only expert_0 and "
        "expert_1 ever run (every token through expert_0, weighted by the other experts' probabilities): pruning "
        "must follow the routing the model applies, and this one does not route tokens to their experts"
    ),
    "doge": (
        "its CDMoE is a product-key memory of many tiny single-neuron experts retrieved per token, not routed MLP "
        "experts; prune its neurons with a dense-model tool instead"
    ),
    "qwen3_omni_moe_talker_text": (
        "the Qwen3-Omni talker decodes audio codec tokens from the thinker's hidden states: in transformers 5.24 its "
        "model runs from `inputs_embeds` only (it looks up `embed_tokens`, which it names `codec_embedding`), so "
        "calibration with token ids cannot reach it; the thinker's text decoder (qwen3_omni_moe_text) is supported"
    ),
    "dots3_note_vision_encoder": (
        "a vision encoder's MoE; hf_moe_prune prunes the text decoder of dots3_note (model_type dots3_note_text)"
    ),
}


@dataclass(frozen=True)
class MoEAdapter:
    """Where one MoE family keeps its router and routed experts, and which config keys describe them.

    Every tensor of the experts module has the expert dimension first (fused `[E, ...]` tensors in transformers 5),
    so reshaping needs no per-family code; the router tensors listed in `router_tensors` are sliced on dim 0 too.

    Args:
        model_type (`str`): The transformers `model_type`.
        block_class (`str`): Class name of the sparse MoE block (the module holding router and experts).
        router (`str`): Attribute of the block holding the router.
        experts (`str`): Attribute of the block holding the fused routed experts.
        count_keys (`tuple[str]`): Config keys for the routed-expert count; all are written so that checkpoints load in
            every transformers version that used one of them. Empty when no config key counts only the routed experts
            (JetMoE's `num_local_experts` sizes its attention experts too): pruned checkpoints then always carry the
            per-layer counts in `quantization_config`, and hf_moe_prune's quantizer shrinks the model when it loads.
        top_k_key (`str`): Config key for the number of experts per token.
        router_tensors (`tuple[str]`): Router parameters/buffers with an expert dimension 0 (sliced when present).
        router_weight (`str`): Path, inside the router, of the `[E, hidden]` weight its logits come from.
        extra_tensors (`tuple[str]`): Other tensors with an expert dimension, as paths inside the block, with the
            dimension after a colon when it is not 0 (`"expert_bias"`, `"gate.moe_statics.e_score_correction_bias:1"`).
        shared (`tuple[str]`): Block attributes that are shared (always-on) experts, never pruned.
        flat_expert_tensors (`tuple[str]`): Tensors of the experts module stored flattened as `[E * rows, ...]` (DBRX's
            `mlp.w1`), sliced as `[E, rows, ...]`.
        routing (`str`): `"experts_call"` (the default): the experts module is called as `experts(hidden,
            top_k_index, top_k_weights)` with the gates the model applies; `"dense_scaled_input"`: Llama-4 style, the
            router returns `[tokens, E]` gates (0 for unselected experts) that scale the input of every expert;
            `"sorted_dispatch"`: JetMoE style, the router returns `(slot order, token of each row, gate of each row,
            rows per expert, logits)` and the expert modules run on the (token, slot) rows sorted by expert, the
            last of them (`more_experts[-1]`) returning each row's ungated expert output.
        dispatch_mask (`bool`): With `"experts_call"`: the experts module takes a one-hot dispatch mask
            `[tokens, k, E]` (all zero for a token its expert had no capacity for) and gates `[tokens, k]` instead of
            top-k indices (Switch Transformers); `MoEBlock.to_top_k`/`from_top_k` translate.
        more_experts (`tuple[str]`): Further block attributes holding routed-expert weights, expert dimension first,
            beside `experts` (JetMoE's `output_linear`, next to `input_linear`): sliced, counted and merged with it.
        top_k (`int`): The number of experts per token when the family's config has no key for it (Switch: 1).
        parent_count_attrs (`tuple[str]`): Int attributes of the module holding the block that hold E, set to the
            kept count by slicing (ERNIE-4.5-VL's outer `Ernie4_5_VLMoeMoeBlock.num_experts`, the width of the
            router-logits buffer its text and vision expert groups share).
        standalone (`bool`): The block runs alone on hidden states (`block(h)`); False when the block is a whole
            decoder layer (Gemma-4), which needs position embeddings: compensation that re-runs blocks is refused.
        trailing_rows (`int | str`): How many non-routed classes follow the E routed experts in the router's logits
            (a number, or the config key holding it): Inkling's shared experts, LongCat-Flash's zero (identity)
            experts, Zaya's skip class. Every expert-axis tensor of E + T entries keeps its T trailing entries when
            experts are sliced, masking leaves them unmasked, and the block counts E experts. A trailing pick reaches
            the experts module either as an index >= E or, remapped, as a slot with gate 0 (Zaya's skip goes to
            expert 0): the observers count neither as routed-expert usage.
        count_attrs (`tuple[str]`): Int attributes of the block, experts and router holding the expert count: set to
            the kept count when they equal E, to kept + T when they equal E + T (LongCat-Flash's `total_experts`).
        same_count (`bool`): Every layer must keep the same number of experts: the model locates something through
            the config's expert count, shared by all layers (Zaya's skip class sits at `config.num_experts`).
        layer_state (`bool`): Decoder layers hand the next layer more than hidden states (Zaya's router states), so
            streaming, which runs the layers one at a time on hidden states alone, is refused.
        fixed_routing (`str | None`): Attribute of the block that is truthy when the block picks its experts from a
            fixed table rather than from its router's scores (DeepSeek-V4's `is_hash` layers route through
            `tid2eid[input_ids]`). Removing whole experts there would change which experts tokens go to, so such
            blocks keep all their experts under whole-expert pruning (like ignored layers, automatically; an
            explicit smaller count for them is refused); neuron pruning narrows them but drops no experts. None:
            every block is routed by its router.
    """

    model_type: str
    block_class: str
    router: str = "gate"
    experts: str = "experts"
    count_keys: tuple[str, ...] = ("num_experts",)
    top_k_key: str = "num_experts_per_tok"
    router_tensors: tuple[str, ...] = ("weight", "bias", "e_score_correction_bias")
    router_weight: str = "weight"
    extra_tensors: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()
    routing: str = "experts_call"
    flat_expert_tensors: tuple[str, ...] = ()
    standalone: bool = True
    trailing_rows: int | str = 0
    # n_routed_experts: DeepSeek-V3-style blocks and routers of older transformers (5.5) read it in forward
    count_attrs: tuple[str, ...] = ("num_experts", "n_routed_experts")
    same_count: bool = False
    layer_state: bool = False
    fixed_routing: str | None = None
    dispatch_mask: bool = False
    more_experts: tuple[str, ...] = ()
    top_k: int = 0
    parent_count_attrs: tuple[str, ...] = ()

    def expert_tensors(self) -> list[tuple[str, int]]:
        """Block-relative paths and expert dimensions of every router/extra tensor that carries an expert axis."""
        linear = f"{self.router}.{self.router_weight.rpartition('.')[0]}".rstrip(".")
        paths = [f"{linear}.weight", f"{linear}.bias", *(f"{self.router}.{name}" for name in self.router_tensors)]
        out = [(path, 0) for path in dict.fromkeys(paths)]
        for spec in self.extra_tensors:
            path, _, dim = spec.partition(":")
            out.append((path, int(dim or 0)))
        return out


@dataclass
class MoEBlock:
    """One routed MoE layer of a model: its module path, decoder-layer index, router and experts."""

    name: str
    layer_idx: int
    module: nn.Module
    adapter: MoEAdapter
    parent: nn.Module | None = None  # the module holding the block, when the adapter has `parent_count_attrs`

    @property
    def router(self) -> nn.Module:
        return getattr(self.module, self.adapter.router)

    @property
    def experts(self) -> nn.Module:
        return getattr(self.module, self.adapter.experts)

    @property
    def router_weight(self) -> torch.Tensor:
        return self.router.get_parameter(self.adapter.router_weight)

    @property
    def expert_modules(self) -> list[nn.Module]:
        """The modules holding routed-expert weights: `experts`, then the adapter's `more_experts`."""
        return [self.experts, *(getattr(self.module, name) for name in self.adapter.more_experts)]

    def expert_weights(self) -> list[tuple[str, torch.nn.Parameter, int | None]]:
        """Every routed-expert weight as `(name, parameter, expert)`: fused `[E, ...]` tensors with expert None, and
        the tensors of per-expert submodules (`nn.ModuleList`/`nn.ModuleDict` experts, as in Switch Transformers)
        with the index of the expert owning them and their name inside it."""
        out = []
        num = self.num_experts
        for module in self.expert_modules:
            for name, param in module.named_parameters(recurse=False):
                if param.dim() and param.shape[0] == num:
                    out.append((name, param, None))
            children = per_expert_modules(module, num)
            for expert, child in enumerate(children or ()):
                out.extend((name, param, expert) for name, param in child.named_parameters())
        return out

    def to_top_k(self, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the experts module was called with, as `(top_k_index, top_k_weights)` of shape `[tokens, k]`.

        A dispatch mask (`MoEAdapter.dispatch_mask`) becomes expert ids; a slot whose token got no expert (over
        capacity) becomes index E (past the last expert, ignored by the statistics) with gate 0.
        """
        if not self.adapter.dispatch_mask:
            return index, weights
        routed = index.bool().any(-1)
        ids = index.argmax(-1).masked_fill(~routed, self.num_experts)
        return ids, weights * routed.to(weights.dtype)

    def from_top_k(self, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(top_k_index, top_k_weights)` as the experts module takes them (the inverse of `to_top_k`; any k)."""
        if not self.adapter.dispatch_mask:
            return index, weights
        num = self.num_experts
        return torch.nn.functional.one_hot(index.long().clamp(max=num), num + 1)[..., :num], weights

    @property
    def num_experts(self) -> int:
        """Routed experts E (trailing non-routed router classes excluded)."""
        # Read from the module, not the config: the config is shared by all layers and may hold another count.
        count = getattr(self.experts, "num_experts", None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count
        trailing = self.trailing_rows
        if trailing:  # the experts may hold the trailing rows too (LongCat-Flash's gate_up_proj): ask the router
            return int(self.router_weight.shape[0]) - trailing
        return int(next(iter(self.experts.parameters())).shape[0])

    @property
    def fixed_routing(self) -> bool:
        """True when the block picks its experts from a fixed table, not its router (see `MoEAdapter.fixed_routing`):
        it keeps all its experts."""
        attr = self.adapter.fixed_routing
        return bool(attr) and bool(getattr(self.module, attr, False))

    @property
    def trailing_rows(self) -> int:
        """T, the non-routed classes after the E routed experts in the router (see `MoEAdapter.trailing_rows`)."""
        spec = self.adapter.trailing_rows
        if isinstance(spec, int):
            return spec
        owner = next((m for m in (self.module, self.router, self.experts) if hasattr(m, "config")), None)
        if owner is None:
            raise ValueError(f"{self.name}: no config to read `{spec}` (the adapter's `trailing_rows`) from.")
        return int(getattr(text_config(owner.config), spec, None) or 0)  # LongCat-Flash: `zero_expert_num` may be None

    def _routing_attr(self, *names: str):
        for module in (self.router, self.module):
            for name in names:
                value = getattr(module, name, None)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value
        return None

    @property
    def top_k(self) -> int:
        top_k = self._routing_attr("top_k", "num_experts_per_tok", "moe_topk") or self.adapter.top_k or None
        if top_k is None:
            # the config of the experts, else of the router or block (Gemma-4's experts keep none)
            owner = next((m for m in (self.experts, self.router, self.module) if hasattr(m, "config")), None)
            top_k = getattr(text_config(owner.config), self.adapter.top_k_key, None) if owner is not None else None
        if top_k is None:
            raise ValueError(f"{self.name}: cannot find the router's top-k; set `top_k_key` in the adapter.")
        return int(top_k)

    @property
    def groups(self) -> tuple[int, int]:
        """`(n_group, topk_group)` of group-limited routing (DeepSeek-V3 style); `(1, 1)` without groups."""
        n_group = self._routing_attr("num_group", "n_group") or 1
        return n_group, self._routing_attr("topk_group") or n_group


def per_expert_modules(module: nn.Module, num_experts: int) -> list[nn.Module] | None:
    """The children of `module` when it is a list or dict of exactly `num_experts` expert modules (one per expert, the
    transformers 4 layout Switch Transformers keeps), else None."""
    from torch import nn

    if isinstance(module, (nn.ModuleList, nn.ModuleDict)) and len(module) == num_experts:
        return list(module.values()) if isinstance(module, nn.ModuleDict) else list(module)
    return None


def text_config(config):
    """The decoder config of a model (the config itself, or `text_config` of a multimodal one)."""
    return getattr(config, "text_config", None) or config


def get_adapter(model: nn.Module) -> MoEAdapter:
    """Return the adapter for `model`'s family, or raise a `ValueError` that names the family and the fix."""
    config = getattr(model, "config", None)
    model_type = getattr(text_config(config), "model_type", None) if config is not None else None
    if model_type in ADAPTERS:
        return ADAPTERS.get(model_type)
    if model_type in UNSUPPORTED:
        raise ValueError(
            f"Model family {model_type!r} ({type(model).__name__}) is not supported: {UNSUPPORTED[model_type]}."
        )
    looks_moe = any(hasattr(m, "experts") and (hasattr(m, "gate") or hasattr(m, "router")) for m in model.modules())
    if not looks_moe:
        raise ValueError(
            f"{type(model).__name__} (model_type={model_type!r}) has no MoE layers: hf_moe_prune prunes the "
            f"routed experts of Mixture-of-Experts models. Supported families: {', '.join(ADAPTERS.names())}."
        )
    raise ValueError(
        f"Model family {model_type!r} ({type(model).__name__}) looks like a MoE model but is not supported yet. "
        f"Supported families: {', '.join(ADAPTERS.names())}. {ADAPTERS.hint}"
    )


_LAYER_RE = re.compile(r"\.(\d+)(?:\.|$)")


def _stack_starts(model: nn.Module, names: list[str]) -> dict[str, int]:
    """The first layer index of each layer stack holding `names`, when there are several: encoder-decoder models
    (Switch Transformers) number each stack's layers from 0, so later stacks continue after the earlier ones (encoder
    layers 0..N-1, decoder layers N..) and layer indices stay unique. `{}` for a single stack."""
    stacks = []
    for name in names:
        match = _LAYER_RE.search("." + name)
        stack = name[: max(0, match.start() - 1)] if match else None
        if stack and stack not in stacks:
            stacks.append(stack)
    starts, total = {}, 0
    for stack in stacks if len(stacks) > 1 else ():
        starts[stack] = total
        total += len(model.get_submodule(stack))
    return starts


def find_blocks(model: nn.Module, adapter: MoEAdapter | None = None) -> list[MoEBlock]:
    """List the routed MoE blocks of `model` in module order.

    Raises:
        `ValueError`: the family is unsupported or the model has no MoE layer.
    """
    adapter = adapter or get_adapter(model)
    # Decoder-layer blocks (Gemma-4) exist in dense models too: only those holding a router are MoE blocks.
    found = [
        (name, module)
        for name, module in model.named_modules()
        if type(module).__name__ == adapter.block_class and hasattr(module, adapter.router)
    ]
    starts = _stack_starts(model, [name for name, _ in found])
    blocks = []
    for name, module in found:
        match = _LAYER_RE.search("." + name)
        layer = starts.get(name[: max(0, match.start() - 1)], 0) + int(match.group(1)) if match else len(blocks)
        parent = model.get_submodule(name.rpartition(".")[0]) if adapter.parent_count_attrs else None
        blocks.append(MoEBlock(name, layer, module, adapter, parent))
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no MoE layers ({adapter.block_class} not found): every layer is dense, so "
            "there are no routed experts to prune. Check `mlp_only_layers`/`decoder_sparse_step` in its config."
        )
    return blocks
