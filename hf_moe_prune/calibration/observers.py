"""Observers: hooks on a block's experts module that record the routing the model really runs.

The experts module of every transformers 5 MoE family is called as `experts(hidden, top_k_index, top_k_weights)`, after
the family's own router chose the experts and their gates (softmax or sigmoid, renormalized or not, with bias or
groups). Observing its inputs therefore gives the real selection and gate values, whatever the family.

Output norms ||f_j(x)|| need each routed expert's output before gating, which the fused forward sums away. For
those the observer calls the model's own experts forward once on the routed (token, slot) rows with unit gates: it
evaluates exactly the same k expert rows per token as the normal forward, records the norms, and returns the gated sum.
Per-neuron statistics need the intermediate activations too: then each routed expert is evaluated from its fused
tensors by `hf_moe_prune.reshape.neuron_layout.expert_intermediate` (the module's own gate function and
activation), once. Per-pair statistics (`PAIR_STATISTICS`) take each token's k x k Gram matrix of its gated routed
outputs from the same per-slot outputs, so they cost no further expert evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_moe_prune.adapters import MoEBlock
from hf_moe_prune.calibration.hooks import wrap_experts
from hf_moe_prune.calibration.stats import LayerStats
from hf_moe_prune.calibration.vocabulary import NEURON_STATISTICS, OUTPUT_STATISTICS, PAIR_STATISTICS


class ExpertObserver:
    """Collects `names` statistics for one block while attached; always detach (the runner does, in `finally`)."""

    def __init__(self, block: MoEBlock, names: frozenset[str]):
        self.block = block
        self.names = frozenset(names)
        self.layout = None
        if self.names & NEURON_STATISTICS:
            from hf_moe_prune.reshape.neuron_layout import neuron_layout

            self.layout = neuron_layout(block.experts)  # raises for experts whose neurons cannot be located
        width = self.layout.width if self.layout is not None else None
        self.stats = LayerStats(block.num_experts, self.names, width)
        # Non-routed router classes after the E experts (shared/zero experts, Zaya's skip class); see `_record`.
        trailing = block.trailing_rows
        self._trailing = trailing > 0
        # Experts that implement their trailing classes themselves (LongCat-Flash's identity experts: `gate_up_proj`
        # holds E + T rows) take index E as a real expert; anywhere else it is out of range (garbage in `grouped_mm`).
        self._pad_index = trailing > 0 and any(
            p.shape[0] == block.num_experts + trailing for p in block.experts.parameters()
        )
        self._handle = None
        self._restore = None
        self._sorted = None  # JetMoE: a forward's routed rows, from the router until the experts' outputs arrive

    @property
    def needs_outputs(self) -> bool:
        return bool(self.names & OUTPUT_STATISTICS)

    def attach(self) -> None:
        experts = self.block.experts
        if self.block.adapter.routing == "dense_scaled_input":
            if "direction_sum" in self.names or self.layout is not None:
                raise ValueError(
                    f"{self.block.adapter.model_type}: its experts scale their inputs by the gate, so direction and "
                    "neuron statistics (tenp, unit='neuron') are not available for this family."
                )
            self._handles = [
                self.block.router.register_forward_hook(self._keep_router_scores),
                experts.register_forward_hook(self._dense_outputs),
            ]
        elif self.block.adapter.routing == "sorted_dispatch":
            if self.layout is not None:
                raise ValueError(
                    f"{self.block.adapter.model_type}: its experts are not a fused module with a described layout, "
                    "so neuron statistics (tenp, unit='neuron') are not available; prune whole experts."
                )
            self._handles = [self.block.router.register_forward_hook(self._sorted_routing)]
            if self.needs_outputs:
                last = self.block.expert_modules[-1]  # returns each sorted row's ungated expert output
                self._handles.append(last.register_forward_hook(self._sorted_outputs))
        elif self.needs_outputs:

            def make(original):
                def forward(hidden_states, top_k_index, top_k_weights, *args, **kwargs):
                    return self._forward_per_slot(original, hidden_states, top_k_index, top_k_weights, *args, **kwargs)

                return forward

            self._restore = wrap_experts(self.block, make)  # keeps accelerate's offloading hook underneath
        else:
            self._handle = experts.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def detach(self) -> None:
        for handle in getattr(self, "_handles", ()):
            handle.remove()
        self._handles = []
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self._restore is not None:
            self._restore()
            self._restore = None

    def _keep_router_scores(self, module, args, output):
        self._scores = output[0]  # [tokens, E]: the gate of each selected expert, 0 elsewhere

    def _dense_outputs(self, module, args, output):
        # Llama-4 style: every expert runs on every token with its input scaled by its gate (0 when not selected),
        # so the observed output f_j(g * x) of a selected expert already carries the gate the model applied.
        scores = self._scores
        tokens, num_experts = scores.shape
        top_k_weights, top_k_index = torch.topk(scores.float(), self.block.top_k, dim=-1)
        outputs = None
        if self.needs_outputs:
            per_expert = output.view(num_experts, tokens, -1)
            outputs = per_expert[top_k_index.reshape(-1), torch.arange(tokens).repeat_interleave(self.block.top_k)]
        self._record(top_k_index, top_k_weights, outputs, gated=True)
        self._scores = None

    def _pre_hook(self, module, args, kwargs):
        top_k_index = args[1] if len(args) > 1 else kwargs["top_k_index"]
        top_k_weights = args[2] if len(args) > 2 else kwargs["top_k_weights"]
        self._record(*self.block.to_top_k(top_k_index, top_k_weights), None)

    def _sorted_routing(self, module, args, output):
        # JetMoE: rows sorted by expert, `sizes[e]` rows each; every token has exactly k rows, so the flat row order
        # viewed as [tokens, k] pairs each row's expert with its gate (`_record` only reads them flattened).
        _, token, gates, sizes, _ = output
        x = args[0].reshape(-1, args[0].shape[-1])
        sizes = torch.as_tensor(sizes, device=gates.device)
        index = torch.repeat_interleave(torch.arange(len(sizes), device=gates.device), sizes).view(len(x), -1)
        order = torch.argsort(token, stable=True) if self.names & PAIR_STATISTICS else None  # rows grouped by token
        if self.needs_outputs:
            self._sorted = (index, gates.view(len(x), -1), x[token], order)
        else:
            self._record(index, gates.view(len(x), -1), None, order=order)

    def _sorted_outputs(self, module, args, output):
        index, gates, rows, order = self._sorted
        self._sorted = None
        self._record(index, gates, output, inputs=rows, order=order)

    def _forward_per_slot(self, original, hidden_states, top_k_index, top_k_weights, *args, **kwargs):
        tokens, k = top_k_index.shape
        flat = hidden_states.reshape(tokens, -1)  # DBRX passes [batch, seq, hidden]; the others [tokens, hidden]
        rows = flat.repeat_interleave(k, dim=0)
        if self.layout is not None:
            index = top_k_index.reshape(-1)
            if self._trailing:  # skip picks (gate 0) feed no neuron statistics; their gated output is 0
                index = index.masked_fill(top_k_weights.reshape(-1) == 0, self.stats.num_experts)
            outputs = self._per_expert(rows, index)
        else:
            index = top_k_index.reshape(-1, 1)
            unit = torch.ones(tokens * k, 1, dtype=top_k_weights.dtype, device=top_k_weights.device)
            if self._pad_index:
                # LongCat-Flash's experts forward squeezes away the slot axis of a top-1 call: add a second slot of
                # index E (its first identity expert) with gate 0, which adds 0.
                index = torch.cat([index, torch.full_like(index, self.stats.num_experts)], dim=1)
                unit = torch.cat([unit, torch.zeros_like(unit)], dim=1)
            outputs = original(rows, index, unit, *args, **kwargs).reshape(tokens * k, -1)
        self._record(top_k_index, top_k_weights, outputs, inputs=rows)  # outputs: f_j(x) per (token, slot)
        gated = outputs.view(tokens, k, -1) * top_k_weights.reshape(tokens, k, 1).to(outputs.dtype)
        return gated.sum(dim=1).view(hidden_states.shape)

    @torch.no_grad()
    def _per_expert(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Outputs f_j(x) of every (token, slot) row, recording per-neuron statistics on the way."""
        from hf_moe_prune.reshape.neuron_layout import down_columns, expert_intermediate

        experts, stats = self.block.experts, self.stats
        outputs = torch.zeros_like(rows)
        for expert in index.unique().tolist():
            if expert >= stats.num_experts:  # expert-parallel sentinel
                continue
            where = (index == expert).nonzero().squeeze(-1)
            active, output = expert_intermediate(experts, self.layout, rows[where], expert)
            outputs[where] = output.to(outputs.dtype)
            down = down_columns(experts, self.layout, expert).float()  # [hidden, I]
            if "neuron_magnitude" in self.names:
                totals = active.float().abs().sum(0) * down.norm(dim=0)
                stats.add_("neuron_magnitude", torch.tensor([expert], device=totals.device), totals.unsqueeze(0))
            if "neuron_projection" in self.names:
                direction = F.normalize(output.float(), dim=-1)  # [n, hidden]
                totals = (active.float() * (direction @ down)).sum(0)
                stats.add_("neuron_projection", torch.tensor([expert], device=totals.device), totals.unsqueeze(0))
        return outputs

    @torch.no_grad()
    def _record(self, top_k_index, top_k_weights, outputs, gated: bool = False, inputs=None, order=None) -> None:
        index = top_k_index.reshape(-1)
        gates = top_k_weights.reshape(-1).float()
        # Expert-parallel sentinels and trailing classes (LongCat-Flash's zero experts) point past the last expert.
        valid = index < self.stats.num_experts
        if self._trailing:
            # A trailing pick may also reach the experts remapped to expert 0 with gate 0 (Zaya's skip): that slot
            # runs no expert, so it is no use of expert 0.
            valid &= gates != 0
        if self.names & PAIR_STATISTICS:
            self._record_pairs(top_k_index.shape[0], index, gates, outputs, valid, gated, order)
        if not bool(valid.all()):
            index, gates = index[valid], gates[valid]
            outputs = outputs[valid] if outputs is not None else None
            inputs = inputs[valid] if inputs is not None else None
        stats = self.stats
        if "count" in self.names:
            stats.add_("count", index, torch.ones_like(gates))
        if "gate_sum" in self.names:
            stats.add_("gate_sum", index, gates)
        if outputs is not None:
            norms = outputs.float().norm(dim=-1)
            if "norm_sum" in self.names:
                stats.add_("norm_sum", index, norms)
            if "gate_norm_sum" in self.names:
                stats.add_("gate_norm_sum", index, norms if gated else gates * norms)
            if "direction_sum" in self.names:
                # How far the gated expert output turns the token it is added to.
                x = inputs.float()
                turn = 1 - F.cosine_similarity(x, x + gates.unsqueeze(-1) * outputs.float(), dim=-1)
                stats.add_("direction_sum", index, gates * norms * turn)
        stats.tokens += top_k_index.shape[0]

    @torch.no_grad()
    def _record_pairs(self, tokens, index, gates, outputs, valid, gated, order) -> None:
        """Per-pair statistics: each token's k x k products of its routed slots, scattered into `[E, E]` at the
        flattened index `i * E + j`. `index`, `gates`, `outputs` and `valid` are per (token, slot) row, token-major
        unless `order` regroups them by token (JetMoE's rows come sorted by expert)."""
        stats, num = self.stats, self.stats.num_experts
        if order is not None:
            index, gates, valid = index[order], gates[order], valid[order]
            outputs = outputs[order] if outputs is not None else None
        k = index.numel() // tokens
        index = index.masked_fill(~valid, 0).view(tokens, k)
        pairs = (index.unsqueeze(2) * num + index.unsqueeze(1)).reshape(-1)
        keep = valid.to(gates.dtype).view(tokens, k)  # invalid slots (sentinels, trailing picks) add 0
        if "pair_count" in self.names:
            stats.add_pairs_("pair_count", pairs, (keep.unsqueeze(2) * keep.unsqueeze(1)).reshape(-1))
        if outputs is None:
            return
        outputs = outputs.reshape(tokens * k, -1)
        # The weight of each row's output in the block's sum: its gate, or 1 when the output already carries it.
        scale = torch.where(valid, torch.ones_like(gates) if gated else gates, torch.zeros_like(gates))
        if "pair_norm_sum" in self.names:
            weighted = torch.where(valid, scale * outputs.float().norm(dim=-1), 0.0).view(tokens, k)
            stats.add_pairs_("pair_norm_sum", pairs, (weighted.unsqueeze(2) * weighted.unsqueeze(1)).reshape(-1))
        if "pair_dot_sum" in self.names:
            # Gram matrices of the gated outputs g_j f_j of each token, in float64, a bounded number of rows at a time.
            step = max(1, 2**24 // max(1, k * outputs.shape[-1]))
            grams = []
            for start in range(0, tokens, step):
                rows = slice(start * k, min(tokens, start + step) * k)
                vectors = outputs[rows].double() * scale[rows].double().unsqueeze(-1)
                vectors = torch.where(valid[rows].unsqueeze(-1), vectors, 0.0).view(-1, k, outputs.shape[-1])
                grams.append(torch.bmm(vectors, vectors.transpose(1, 2)).reshape(-1))
            stats.add_pairs_("pair_dot_sum", pairs, torch.cat(grams))
