"""Old module paths of modules that moved into the stage packages, kept importable (a leaf module).

`import hf_moe_prune.saving` (or `from hf_moe_prune.evaluation import evaluate`) still works and gives the very module
object at the new path, private names and monkeypatching included. New code should use the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "hf_moe_prune.allocation_adaptive": "hf_moe_prune.allocation",
    "hf_moe_prune.atomic": "hf_moe_prune.export.atomic",
    "hf_moe_prune.card": "hf_moe_prune.export.card",
    "hf_moe_prune.cli_analysis": "hf_moe_prune.cli.inspect",
    "hf_moe_prune.cli_commands": "hf_moe_prune.cli.common",
    "hf_moe_prune.cli_plan": "hf_moe_prune.cli.plan",
    "hf_moe_prune.cli_report": "hf_moe_prune.cli.report",
    "hf_moe_prune.evaluation": "hf_moe_prune.pipeline.evaluation",
    "hf_moe_prune.hub": "hf_moe_prune.export.hub",
    "hf_moe_prune.inspection": "hf_moe_prune.pipeline.inspection",
    "hf_moe_prune.offload": "hf_moe_prune.reshape.offload",
    "hf_moe_prune.optimum": "hf_moe_prune.integration.optimum",
    "hf_moe_prune.patching": "hf_moe_prune.calibration.hooks",
    "hf_moe_prune.portable": "hf_moe_prune.export.portable",
    "hf_moe_prune.saving": "hf_moe_prune.export.saving",
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new path."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return None  # a placeholder module; `exec_module` swaps in the real one

    def exec_module(self, module) -> None:
        # The import system reads the module back from sys.modules after this call, so the old name then refers
        # to the new module itself (whose own __spec__ and __name__ stay untouched).
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])


def install() -> None:
    """Put the finder on `sys.meta_path` once."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
