"""What a scoring method is: the statistics it needs and a pure function from them to one score per expert."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

# The statistics vocabulary belongs to calibration (what it can observe); methods name what they require from it.
from hf_moe_prune.calibration.vocabulary import NEURON_STATISTICS, OUTPUT_STATISTICS, STATISTICS  # noqa: F401
from hf_moe_prune.registries import METHODS
from hf_moe_prune.registry import closest


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
            neurons inside experts, see `hf_moe_prune.allocation.neurons`).
        options (`Mapping[str, type]`, *optional*): The `method_kwargs` the method reads and their types (`bool`,
            `int`, `float`, `str`). Defaults to the keyword parameters of `score` (their values are then checked by
            running `score` on empty statistics), which is what every forward-statistics method needs.
    """

    name: str
    requires: frozenset[str]
    score: Callable[..., torch.Tensor]
    reference: str = ""
    fit: Callable[..., dict] | None = None
    default_allocation: str = "uniform"
    default_compensation: str = "none"
    unit: str = "expert"
    options: Mapping[str, type] | None = None

    @property
    def needs_calibration(self) -> bool:
        return bool(self.requires) or self.fit is not None

    def option_names(self) -> list[str]:
        """The `method_kwargs` keys this method reads."""
        if self.options is not None:
            return sorted(self.options)
        parameters = list(inspect.signature(self.score).parameters.values())[2:]  # after (stats, generator)
        return sorted(p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))

    def check_options(self, method_kwargs: Mapping, extra: Iterable[str] = ()) -> None:
        """Refuse unknown or ill-typed `method_kwargs` before any calibration (a typo must not run for minutes with
        the default).

        Args:
            method_kwargs (`Mapping`): The options given.
            extra (`Iterable[str]`, *optional*): Other accepted keys (e.g. the neuron schedule's).

        Raises:
            `ValueError`: an unknown key (with the closest valid name) or a bad value; `TypeError`: a value of the
                wrong type.
        """
        if not isinstance(method_kwargs, Mapping):
            raise TypeError(f"method_kwargs must be a dict of options, got {type(method_kwargs).__name__}.")
        own = self.option_names()
        known = own + sorted(extra)
        for key in method_kwargs:
            if key not in known:
                close = closest(key, known)
                hint = f" Did you mean {close!r}?" if close else ""
                raise ValueError(
                    f"method_kwargs: {self.name!r} has no option {key!r}.{hint} Its options: "
                    f"{', '.join(known) if known else 'none'}."
                )
        for key, kind in (self.options or {}).items():
            if key in method_kwargs:
                _check_type(f"method_kwargs[{key!r}]", method_kwargs[key], kind)
        if self.options is None:
            # Run the pure score function on empty statistics: a bad value (reduce="avg") fails now, not after the
            # calibration pass.
            from hf_moe_prune.calibration.stats import LayerStats

            given = {k: v for k, v in method_kwargs.items() if k in own}
            stats = LayerStats(2, self.requires - NEURON_STATISTICS)
            try:
                self.score(stats, torch.Generator().manual_seed(0), **given)
            except (TypeError, ValueError) as error:
                raise ValueError(f"method_kwargs: {error}") from None


def _check_type(field: str, value, kind: type) -> None:
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise TypeError(f"{field} must be {'a finite number' if kind is float else kind.__name__}, got {value!r}.")


def register_method(
    name: str,
    requires: tuple[str, ...] = (),
    reference: str = "",
    fit: Callable[..., dict] | None = None,
    default_allocation: str = "uniform",
    default_compensation: str = "none",
    unit: str = "expert",
    options: Mapping[str, type] | None = None,
):
    """Decorator registering `score(stats, generator, **kwargs)` as method `name` (see `ScoringMethod` for the
    arguments)."""

    unknown = set(requires) - set(STATISTICS)
    if unknown:
        raise ValueError(f"method {name!r} requires unknown statistics {sorted(unknown)}; known: {STATISTICS}")

    def decorator(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        METHODS.add(
            name,
            ScoringMethod(
                name, frozenset(requires), fn, reference, fit, default_allocation, default_compensation, unit, options
            ),
        )
        return fn

    return decorator


def per_routed_token(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens routed to each expert; 0 for an expert no token reached."""
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
