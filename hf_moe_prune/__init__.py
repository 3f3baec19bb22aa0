"""hf_moe_prune: one-shot expert pruning for Mixture-of-Experts models in Hugging Face transformers.

Importing the package registers the `moe_prune` quantization method, so that
`from_pretrained(path, pruning_config=MoEPruneConfig(...))` (or `quantization_config=`) prunes while loading.
"""

from hf_moe_prune import _moved
from hf_moe_prune.adapters import ADAPTERS, MoEAdapter, find_blocks
from hf_moe_prune.api import apply_plan, prune
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.elastic import save_elastic
from hf_moe_prune.export.hub import push_to_hub
from hf_moe_prune.export.saving import save_pruned
from hf_moe_prune.integration import MoEPruneHfQuantizer, register
from hf_moe_prune.methods import METHODS, register_method
from hf_moe_prune.plan import BlockPlan, PrunePlan
from hf_moe_prune.registries import ALLOCATIONS, COMPENSATIONS, register_allocation, register_compensation
from hf_moe_prune.statistics import Statistics, calibrate, combine_statistics, load_statistics
from hf_moe_prune.streaming import stream_prune
from hf_moe_prune.version import __version__  # noqa: E402,F401

register()
_moved.install()

__all__ = [
    "ADAPTERS",
    "ALLOCATIONS",
    "COMPENSATIONS",
    "METHODS",
    "BlockPlan",
    "MoEAdapter",
    "MoEPruneConfig",
    "MoEPruneHfQuantizer",
    "PrunePlan",
    "Statistics",
    "__version__",
    "apply_plan",
    "calibrate",
    "combine_statistics",
    "find_blocks",
    "load_statistics",
    "prune",
    "push_to_hub",
    "register_allocation",
    "register_compensation",
    "register_method",
    "save_elastic",
    "save_pruned",
    "stream_prune",
]
