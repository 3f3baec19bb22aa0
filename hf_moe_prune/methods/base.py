"""What a scoring method is: the statistics it needs and a pure function from them to one score per expert."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

# The statistics vocabulary belongs to calibration (what it can observe); methods name what they require from it.
from hf_moe_prune.calibration.vocabulary import (  # noqa: F401
    NEURON_STATISTICS,
    OUTPUT_STATISTICS,
    PAIR_STATISTICS,
    STATISTICS,
)
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
        select (`Callable`, *optional*): For methods that choose the experts of a block jointly rather than one by
            one (pairwise interactions): `select(stats, keep, n_group=1, **method_kwargs) -> list[int]`, the `keep`
            kept expert indices in ascending order, `keep / n_group` in each of `n_group` contiguous expert groups.
            Used instead of the top-`keep` scores once the allocation has set `keep`; `score` must still give one
            score per expert, which allocations that rank experts across layers (`global`, ...) and the plan use.
        searches (`bool`): Not a score but a search among the other methods (`auto`): calibration gathers the
            statistics of every candidate and the pipeline (`hf_moe_prune.pipeline.auto`) picks one.
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
    select: Callable[..., list[int]] | None = None
    searches: bool = False

    @property
    def needs_calibration(self) -> bool:
        return bool(self.requires) or self.fit is not None or self.searches

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
    select: Callable[..., list[int]] | None = None,
    searches: bool = False,
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
                name,
                frozenset(requires),
                fn,
                reference,
                fit,
                default_allocation,
                default_compensation,
                unit,
                options,
                select,
                searches,
            ),
        )
        return fn

    return decorator


def per_routed_token(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens routed to each expert; 0 for an expert no token reached."""
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def select_min_quadratic(matrix: torch.Tensor, keep: int, n_group: int = 1, swaps: bool = True) -> list[int]:
    """The experts kept when the removed set R (`E - keep` experts) minimises `b^T F b`, b the indicator of R.

    A small binary quadratic program per layer, searched directly. Greedy: remove, one at a time, the expert whose
    removal increases `b^T F b` least given those already removed. With `swaps`, a second greedy pass starts from
    every expert removed and restores, one at a time, the expert whose return lowers `b^T F b` most; each of the two
    sets is then improved by swaps (exchange a removed and a kept expert while that lowers `b^T F b` by more than
    rounding, at most `10 E` swaps) and the better one is taken (the first on a tie). Ties between experts keep the
    lower index, as `select_experts` does. With `n_group` groups (contiguous blocks of experts) every group keeps
    `keep // n_group` experts and swaps stay within a group; the objective still counts the pairs across groups.

    Args:
        matrix (`torch.Tensor`): `F`, `[E, E]` (symmetrised; `b^T F b` only sees `F + F^T`).
        keep (`int`): Experts to keep.
        n_group (`int`, *optional*, defaults to 1): Contiguous expert groups that each keep the same number.
        swaps (`bool`, *optional*, defaults to `True`): Both greedy passes and swaps; `False`: the removing greedy
            pass alone.

    Returns:
        `list[int]`: The kept experts, ascending.
    """
    f = matrix.detach().double().cpu()
    f = (f + f.T) / 2
    num = f.shape[0]
    if keep >= num or keep <= 0:
        return list(range(max(0, min(keep, num))))
    groups = max(1, n_group)
    group = torch.arange(num) // (num // groups)
    kept_per_group = torch.full((groups,), keep // groups) if groups > 1 else torch.tensor([keep])
    best = _remove_greedily(f, group, group.bincount(minlength=groups) - kept_per_group)
    if swaps:
        best = _swap(f, group, best)
        other = _swap(f, group, _restore_greedily(f, group, kept_per_group.clone()))
        if _cost(f, other) < _cost(f, best):
            best = other
    return (~best).nonzero().squeeze(1).tolist()


def _cost(f: torch.Tensor, removed: torch.Tensor) -> float:
    b = removed.double()
    return float(b @ f @ b)


def _remove_greedily(f: torch.Tensor, group: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    num = f.shape[0]
    removed = torch.zeros(num, dtype=torch.bool)
    for _ in range(int(quota.sum())):
        increase = f.diagonal() + 2 * (f @ removed.double())
        allowed = ~removed & (quota[group] > 0)
        # the smallest increase; among equal ones the highest index goes (the lower index is kept)
        j = num - 1 - int(torch.argmin(increase.masked_fill(~allowed, math.inf).flip(0)))
        removed[j] = True
        quota[group[j]] -= 1
    return removed


def _restore_greedily(f: torch.Tensor, group: torch.Tensor, quota: torch.Tensor) -> torch.Tensor:
    removed = torch.ones(f.shape[0], dtype=torch.bool)
    for _ in range(int(quota.sum())):
        decrease = 2 * (f @ removed.double()) - f.diagonal()
        allowed = removed & (quota[group] > 0)
        i = int(torch.argmax(decrease.masked_fill(~allowed, -math.inf)))  # ties: the lowest index comes back
        removed[i] = False
        quota[group[i]] -= 1
    return removed


def _swap(f: torch.Tensor, group: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    removed, diagonal = removed.clone(), f.diagonal()
    tolerance = 1e-12 * float(f.abs().sum())
    for _ in range(10 * f.shape[0]):
        out, kept = removed.nonzero().squeeze(1), (~removed).nonzero().squeeze(1).flip(0)
        s = f @ removed.double()
        # b^T F b changes by 2 (s_j - s_i) + F_ii + F_jj - 2 F_ij when removed expert i comes back and kept j goes
        delta = 2 * (s[kept][None, :] - s[out][:, None]) + diagonal[out][:, None] + diagonal[kept][None, :]
        delta = (delta - 2 * f[out][:, kept]).masked_fill(group[out][:, None] != group[kept][None, :], math.inf)
        best = int(torch.argmin(delta))  # ties: the lowest removed index comes back, the highest kept index goes
        if float(delta.view(-1)[best]) >= -tolerance:
            break
        removed[out[best // len(kept)]], removed[kept[best % len(kept)]] = False, True
    return removed
