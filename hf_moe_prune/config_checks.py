"""Budget and size checks of `MoEPruneConfig` (a leaf, split from the config to keep each file readable)."""

from __future__ import annotations

import numbers

from hf_moe_prune.registries import ALLOCATIONS, schedule_options


def _check_neuron_unit(config) -> None:
    if config.num_experts_to_keep is not None or not isinstance(config.allocation, str):
        raise ValueError(
            "unit='neuron' prunes a fraction of the routed-expert parameters: give `ratio`, not expert counts."
        )
    schedule_options(config.allocation, config.method_kwargs)  # checks the schedule options


def check_budget_fields(config, explicit: bool) -> None:
    """How much to prune (exactly one budget, in range) and the row/batch sizes; a `ValueError` names the fix."""
    if config.unit == "neuron":
        _check_neuron_unit(config)
    if explicit:
        counts = config.allocation.values() if isinstance(config.allocation, dict) else config.allocation
        if not all(isinstance(c, numbers.Integral) and c >= 1 for c in counts):
            raise ValueError(f"allocation counts must be positive integers, got {config.allocation!r}.")
    if config.ratio is not None:
        if isinstance(config.ratio, bool) or not isinstance(config.ratio, numbers.Real) or not 0 < config.ratio < 1:
            raise ValueError(
                f"ratio must be a number in (0, 1): the fraction of routed experts to remove; got {config.ratio!r}. "
                "For example ratio=0.5 removes half of the experts."
            )
    if config.num_experts_to_keep is not None and (
        not isinstance(config.num_experts_to_keep, numbers.Integral) or config.num_experts_to_keep < 1
    ):
        raise ValueError(f"num_experts_to_keep must be a positive integer, got {config.num_experts_to_keep!r}.")
    budgets = sum([config.ratio is not None, config.num_experts_to_keep is not None, explicit])
    if budgets > 1:
        raise ValueError("Give only one of `ratio`, `num_experts_to_keep` or per-layer counts in `allocation`.")
    if budgets == 0 and not config.is_pruned_checkpoint:
        raise ValueError(
            "Say how much to prune: `ratio=0.5` (fraction of experts removed), `num_experts_to_keep=N`, or "
            "per-layer counts in `allocation`."
        )
    for name in ("num_samples", "seq_len", "batch_size"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    fraction = config.eval_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction < 1:
        raise ValueError(
            f"eval_fraction must be a number in [0, 1): the share of calibration rows held out to measure the "
            f"pruned model (0 measures nothing); got {fraction!r}."
        )


def check_portable(config, explicit: bool) -> None:
    """`portable=True`: refuse, before anything runs, what gives a checkpoint only this library loads."""
    if not isinstance(config.portable, bool):
        raise ValueError(f"portable must be True or False, got {config.portable!r}.")
    if not config.portable or config.is_pruned_checkpoint:
        return
    fix = "use allocation='uniform' (or 'auto', which then searches uniform plans), or portable=False"
    if config.unit == "neuron":
        raise ValueError(
            "portable=True: neuron pruning leaves experts of different widths, which no stock consumer loads; prune "
            "whole experts (unit='expert'), or portable=False."
        )
    if explicit:
        counts = list(config.allocation.values() if isinstance(config.allocation, dict) else config.allocation)
        if len(set(counts)) > 1:
            raise ValueError(f"portable=True: per-layer counts {config.allocation!r} differ between layers; {fix}.")
    else:
        allocator = ALLOCATIONS.get(config.allocation)
        if not (allocator.fixed_counts or allocator.searches):
            raise ValueError(
                f"portable=True: allocation={config.allocation!r} gives each layer its own count, which only this "
                f"library loads; {fix}."
            )
