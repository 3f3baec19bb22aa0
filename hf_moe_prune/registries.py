"""The registries of the pipeline's pluggable stages and the records they hold: a leaf module.

`METHODS` (score), `ALLOCATIONS` (allocate) and `COMPENSATIONS` (compensate) map lower-case names to records that say
what each entry needs and supports, so that the rest of the library asks the record (`allocator.streams`,
`compensator.needs_inputs`) instead of testing names (`allocation == "outlier"`), and refusal texts, the CLI help and
README lists come from the registries. Like transformers' `utils/quantization_config.py`, which never imports a
quantizer, this module imports nothing of the package but `Registry`: configs validate names against it, and the
entries register themselves where they are defined (`hf_moe_prune.allocation`, `hf_moe_prune.compensation`,
`hf_moe_prune.methods`, `hf_moe_prune.allocation.neurons`), all imported by `import hf_moe_prune`.

Add your own with `register_method`, `register_allocation` or `register_compensation` (see `docs/adding_a_method.md`
and `docs/adding_an_allocation.md`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hf_moe_prune.registry import Registry

UNITS = ("expert", "neuron")
DEFAULT_METHOD = "reap"
DEFAULT_ALLOCATION = "uniform"  # what a method or unit falls back to when its own default does not apply
DEFAULT_COMPENSATION = "none"


@dataclass(frozen=True)
class Allocator:
    """A registered allocation: how many experts (or neurons) each MoE layer keeps under one global budget.

    Args:
        name (`str`): Lower-case name used in `MoEPruneConfig(allocation=...)`.
        allocate (`Callable`, *optional*): `allocate(blocks, scores, budget, context) -> {block name: keep count}`;
            counts respect every layer's floor and sum to `budget` exactly. None for allocations that only name a
            neuron schedule (`hf_moe_prune.allocation.neurons`).
        units (`tuple[str, ...]`): What it allocates: `"expert"` counts, `"neuron"` schedules, or both.
        reads_model (`bool`): Re-runs the model under candidate plans (needs the whole model in memory).
        needs_inputs (`bool`): Records each block's calibration inputs during calibration (one extra sample).
        distributed (`bool`): Gives the same result under torch.distributed as in one process.
        description (`str`): One line for the CLI help and error messages.
        fixed_counts (`bool`): Every layer's count follows from the ratio alone (`"uniform"`), so the counts are known
            before calibration and every layer keeps the same share.
        schedule (`dict`, *optional*): For neuron allocations, the schedule's defaults (`keep_whole`, `neuron_keep`:
            a fraction or a `(shallow, deep)` pair), overridable through `method_kwargs` (see `schedule_options`).
        searches (`bool`): Not an allocation but a search among the others (`auto`), judged on held-out rows by the
            pipeline (`hf_moe_prune.pipeline.auto`).
    """

    name: str
    allocate: Callable | None = None
    units: tuple[str, ...] = ("expert",)
    reads_model: bool = False
    needs_inputs: bool = False
    distributed: bool = True
    description: str = ""
    fixed_counts: bool = False
    schedule: dict | None = None
    searches: bool = False

    @property
    def streams(self) -> bool:
        """Works while streaming (plan before load): needs neither the whole model nor block inputs, and is no search
        (which judges candidates on the whole model)."""
        return not (self.reads_model or self.needs_inputs or self.searches)

    def __call__(self, blocks, scores, budget, context=None):
        if self.allocate is None:
            raise ValueError(f"allocation {self.name!r} shapes a neuron schedule; it allocates no expert counts.")
        return self.allocate(blocks, scores, budget, context)


@dataclass(frozen=True)
class Compensator:
    """A registered compensation: adjusts the kept experts (or router) so that the layer output changes least.

    Args:
        name (`str`): Lower-case name used in `MoEPruneConfig(compensation=...)`.
        compensate (`Callable`): `compensate(block, kept, context)`, called on the still unpruned block just before it
            is sliced, with a `hf_moe_prune.compensation.CompensationContext`.
        changes_weights (`bool`): False only for the identity (`"none"`); a plan replayed without calibration cannot
            repeat a compensation that changes weights.
        needs_inputs (`bool`): Needs a sample of each block's calibration inputs (re-runs the block on its own, so
            the block must be standalone, not a whole decoder layer).
        reads_dropped (`bool`): Reads the dropped experts' weights (streaming never loads them).
        units (`tuple[str, ...]`): The pruning units it works with.
        check (`Callable`, *optional*): `check(block)` raising a `ValueError` before calibration when the block's
            layout is not supported.
        description (`str`): One line for the CLI help and error messages.
        touches (`tuple[str]`): Attributes of the experts module whose kept-expert rows it changes (and nothing
            else), e.g. `("down_proj",)`: `auto` can then judge it by saving those rows and putting them back. Empty
            when unknown or wider (the compensation is not searched).
        searches (`bool`): Not a compensation but a search among the others (`auto`), judged on held-out rows by the
            pipeline (`hf_moe_prune.pipeline.auto`).
    """

    name: str
    compensate: Callable | None
    changes_weights: bool = True
    needs_inputs: bool = False
    reads_dropped: bool = False
    units: tuple[str, ...] = ("expert",)
    check: Callable | None = None
    description: str = ""
    touches: tuple[str, ...] = ()
    searches: bool = False

    @property
    def streams(self) -> bool:
        """Works while streaming: the identity, or a compensation that needs neither block inputs nor dropped
        experts (a search judges whole-model candidates, which streaming cannot)."""
        return not (self.needs_inputs or self.reads_dropped or self.searches)

    @property
    def distributed(self) -> bool:
        """Gives the same result under torch.distributed (input sampling has no exact sharded equivalent)."""
        return not (self.needs_inputs or self.searches)

    def __call__(self, block, kept, context=None):
        if self.compensate is None:
            raise ValueError(f"compensation {self.name!r} is a search: the pipeline resolves it before applying.")
        return self.compensate(block, kept, context)


METHODS: Registry = Registry("pruning method", "Add one with hf_moe_prune.register_method (docs/adding_a_method.md).")
ALLOCATIONS: Registry[Allocator] = Registry(
    "allocation", "Add one with hf_moe_prune.register_allocation (docs/adding_an_allocation.md)."
)
COMPENSATIONS: Registry[Compensator] = Registry(
    "compensation", "Add one with hf_moe_prune.register_compensation (docs/adding_an_allocation.md)."
)


def _units(units: tuple[str, ...] | str) -> tuple[str, ...]:
    units = (units,) if isinstance(units, str) else tuple(units)
    if not units or any(u not in UNITS for u in units):
        raise ValueError(f"units must be a non-empty subset of {UNITS}, got {units!r}.")
    return units


def register_allocation(
    name: str,
    *,
    units: tuple[str, ...] | str = ("expert",),
    reads_model: bool = False,
    needs_inputs: bool = False,
    distributed: bool = True,
    description: str = "",
    fixed_counts: bool = False,
    schedule: dict | None = None,
    searches: bool = False,
):
    """Decorator registering `allocate(blocks, scores, budget, context)` as allocation `name` (see `Allocator`).

    Example:
        ```python
        >>> @hf_moe_prune.register_allocation("front_loaded", description="early layers keep more")
        ... def front_loaded(blocks, scores, budget, context=None):
        ...     return hf_moe_prune.allocation.fit_budget(blocks, {b.name: ... for b in blocks}, budget)
        ```
    """

    def decorator(fn: Callable | None) -> Callable | None:
        ALLOCATIONS.add(
            name,
            Allocator(
                name.lower(),
                fn,
                _units(units),
                reads_model,
                needs_inputs,
                distributed,
                description or _first_line(fn),
                fixed_counts,
                schedule,
                searches,
            ),
        )
        return fn

    return decorator


def register_compensation(
    name: str,
    *,
    changes_weights: bool = True,
    needs_inputs: bool = False,
    reads_dropped: bool = False,
    units: tuple[str, ...] | str = ("expert",),
    check: Callable | None = None,
    description: str = "",
    touches: tuple[str, ...] = (),
    searches: bool = False,
):
    """Decorator registering `compensate(block, kept, context)` as compensation `name` (see `Compensator`).

    A search (`searches=True`, `auto`) registers with `None` in place of a function.
    """

    def decorator(fn: Callable | None) -> Callable | None:
        COMPENSATIONS.add(
            name,
            Compensator(
                name.lower(),
                fn,
                changes_weights,
                needs_inputs,
                reads_dropped,
                _units(units),
                check,
                description or _first_line(fn),
                tuple(touches),
                searches,
            ),
        )
        return fn

    return decorator


def names_for(registry: Registry, unit: str) -> list[str]:
    """The names in `registry` (allocations or compensations) that serve `unit`."""
    return [name for name in registry.names() if unit in registry.get(name).units]


def _first_line(fn) -> str:
    doc = (getattr(fn, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


# The options of every neuron schedule, overridable through `method_kwargs` (see hf_moe_prune.allocation.neurons).
SCHEDULE_KEYS = ("keep_whole", "neuron_keep", "drop_experts", "min_neurons", "neuron_score", "multiple_of")
NEURON_SCORES = {"magnitude": "neuron_magnitude", "projection": "neuron_projection"}  # option -> statistic


def schedule_options(allocation: str, method_kwargs: dict[str, Any]) -> dict[str, Any]:
    """A neuron schedule's options: the allocation's defaults (`Allocator.schedule`) overridden by `method_kwargs`,
    checked.

    Raises:
        `ValueError`: the allocation decides whole-expert counts only, or an option is out of range.
    """
    allocator = ALLOCATIONS.get(allocation)
    if allocator.schedule is None:
        raise ValueError(
            f"allocation={allocation!r} decides whole-expert counts; with unit='neuron' use one of "
            f"{[a.name for a in ALLOCATIONS.values() if a.schedule is not None]} (neuron allocations), or "
            "unit='expert'."
        )
    options = {
        "keep_whole": 0.0,
        "neuron_keep": (0.5, 0.5),
        **allocator.schedule,
        "drop_experts": 0.0,
        "min_neurons": 1,
        "neuron_score": "magnitude",
        "multiple_of": 8,
    }
    options.update({k: v for k, v in method_kwargs.items() if k in SCHEDULE_KEYS})
    for key in ("keep_whole", "neuron_keep"):
        value = options[key]
        pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
        if len(pair) != 2 or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in pair):
            raise ValueError(f"{key} must be a fraction in [0, 1] or a (shallow, deep) pair of them, got {value!r}.")
        options[key] = (float(pair[0]), float(pair[1]))
    if not 0 <= float(options["drop_experts"]) < 1:
        raise ValueError(f"drop_experts must be a fraction in [0, 1), got {options['drop_experts']!r}.")
    if options["neuron_score"] not in NEURON_SCORES:
        raise ValueError(f"neuron_score must be one of {list(NEURON_SCORES)}, got {options['neuron_score']!r}.")
    for key in ("min_neurons", "multiple_of"):
        if isinstance(options[key], bool) or not isinstance(options[key], int) or options[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {options[key]!r}.")
    return options


def check_search_request(config) -> None:
    """Before calibration: a searching method, allocation or compensation (`auto`) of `config` has held-out rows to
    judge candidates on, whole experts to search, and a sensible time budget (else a `ValueError` naming the fix)."""
    time_budget, eval_fraction, unit = config.time_budget, config.eval_fraction, config.unit
    if time_budget is not None and (
        isinstance(time_budget, bool) or not isinstance(time_budget, (int, float)) or not time_budget >= 0
    ):
        raise ValueError(f"time_budget must be a number of seconds >= 0 (or None), got {time_budget!r}.")
    searching = [
        f"{key}={getattr(config, key)!r}"
        for key, registry in (("method", METHODS), ("allocation", ALLOCATIONS), ("compensation", COMPENSATIONS))
        if isinstance(getattr(config, key), str)
        and getattr(config, key) in registry
        and registry.get(getattr(config, key)).searches
    ]
    if searching and not eval_fraction:
        raise ValueError(
            f"{' and '.join(searching)} chooses among candidate plans by measuring them on held-out calibration "
            "rows: give eval_fraction > 0 (e.g. 0.1)."
        )
    if searching and unit != "expert":
        raise ValueError(f"{' and '.join(searching)} searches whole-expert plans: use unit='expert'.")
