"""What a scoring method is: the statistics it needs and a pure function from them to one score per expert."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..registry import Registry

# Statistics the calibration engine can collect per MoE block, all sums over routed (token, expert) pairs, so that
# batches, devices and processes add up:
#   count          number of tokens routed to the expert
#   gate_sum       sum of the gate values the model applied
#   norm_sum       sum of ||f_j(x)||_2, the expert output before gating
#   gate_norm_sum  sum of g_j(x) * ||f_j(x)||_2
#   direction_sum  sum of g_j(x) * ||f_j(x)||_2 * (1 - cos(x, x + g_j(x) f_j(x))): how far the expert turns its input
# and, per intermediate neuron i of expert j (`[E, I]` sums; a_i(x) the neuron's activation, W_d the down projection):
#   neuron_magnitude   sum of |a_i(x)| * ||W_d[:, i]||
#   neuron_projection  sum of a_i(x) * (W_d[:, i] . f_j(x) / ||f_j(x)||)
STATISTICS = (
    "count",
    "gate_sum",
    "norm_sum",
    "gate_norm_sum",
    "direction_sum",
    "neuron_magnitude",
    "neuron_projection",
)
NEURON_STATISTICS = frozenset({"neuron_magnitude", "neuron_projection"})
# Need the experts' outputs, not only the routing.
OUTPUT_STATISTICS = frozenset({"norm_sum", "gate_norm_sum", "direction_sum"}) | NEURON_STATISTICS


@dataclass(frozen=True)
class ScoringMethod:
    """A registered expert-scoring method.

    Args:
        name (`str`): Lower-case method name used in `MoEPruneConfig(method=...)`.
        requires (`frozenset[str]`): Statistics (see `STATISTICS`) the calibration must collect; empty = data-free.
        score (`Callable`): `score(stats, generator, **method_kwargs) -> Tensor[E]`; higher means more worth keeping.
        reference (`str`): Where the method comes from.
        fit (`Callable`, *optional*): For methods that need more than forward statistics (gradients, learned
            masks): `fit(model, blocks, rows, config, progress) -> {block name: Tensor[E]}`, run after the
            statistics pass; its scores replace `score`'s.
        default_allocation (`str`): Allocation used when the config does not name one.
        default_compensation (`str`): Compensation used when the config does not name one.
        unit (`str`): What the method prunes by default: `"expert"` (whole experts) or `"neuron"` (intermediate
            neurons inside experts, see `hf_moe_prune.neurons`).
    """

    name: str
    requires: frozenset[str]
    score: Callable[..., torch.Tensor]
    reference: str = ""
    fit: Callable[..., dict] | None = None
    default_allocation: str = "uniform"
    default_compensation: str = "none"
    unit: str = "expert"

    @property
    def needs_calibration(self) -> bool:
        return bool(self.requires) or self.fit is not None


METHODS: Registry[ScoringMethod] = Registry("pruning method")


def register_method(
    name: str,
    requires: tuple[str, ...] = (),
    reference: str = "",
    fit: Callable[..., dict] | None = None,
    default_allocation: str = "uniform",
    default_compensation: str = "none",
    unit: str = "expert",
):
    """Decorator registering `score(stats, generator, **kwargs)` as method `name`."""

    unknown = set(requires) - set(STATISTICS)
    if unknown:
        raise ValueError(f"method {name!r} requires unknown statistics {sorted(unknown)}; known: {STATISTICS}")

    def decorator(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        METHODS.add(
            name,
            ScoringMethod(
                name, frozenset(requires), fn, reference, fit, default_allocation, default_compensation, unit
            ),
        )
        return fn

    return decorator


def per_routed_token(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens routed to each expert; 0 for an expert no token reached."""
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
