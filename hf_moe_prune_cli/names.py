"""Names the help texts list, without importing `hf_moe_prune`: the live registries when the library is already
imported (plug-ins registered before `main()` included), else the built-in names (kept equal to the registries by
tests/test_cli.py)."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

DEFAULT_METHOD = "reap"
METHODS = (
    "auto", "compel", "diep", "ean", "frequency", "hope",
    "man", "output_error", "random", "reap", "soft_count", "tenp",
)  # fmt: skip
EXPERT_ALLOCATIONS = ("auto", "evolutionary", "global", "learned", "outlier", "uniform")
NEURON_ALLOCATIONS = ("trapezoid", "uniform")
COMPENSATIONS = ("auto", "fisher", "merge", "none")


def names() -> dict[str, tuple[str, ...] | str]:
    """`methods`, `default_method`, `expert_allocations`, `neuron_allocations`, `compensations`."""
    if "hf_moe_prune.methods" in sys.modules:  # the library is loaded: its registries are the truth
        from hf_moe_prune.registries import ALLOCATIONS, names_for
        from hf_moe_prune.registries import COMPENSATIONS as LIVE
        from hf_moe_prune.registries import DEFAULT_METHOD as DEFAULT
        from hf_moe_prune.registries import METHODS as M

        return {
            "methods": tuple(M.names()),
            "default_method": DEFAULT,
            "expert_allocations": tuple(names_for(ALLOCATIONS, "expert")),
            "neuron_allocations": tuple(names_for(ALLOCATIONS, "neuron")),
            "compensations": tuple(LIVE.names()),
        }
    return {
        "methods": METHODS,
        "default_method": DEFAULT_METHOD,
        "expert_allocations": EXPERT_ALLOCATIONS,
        "neuron_allocations": NEURON_ALLOCATIONS,
        "compensations": COMPENSATIONS,
    }


def version() -> str:
    """The installed version, read without importing the library."""
    try:
        return metadata.version("hf-moe-prune")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        text = (Path(__file__).resolve().parent.parent / "hf_moe_prune" / "version.py").read_text()
        return text.split("__version__", 1)[1].split('"')[1]
