"""hf_moe_prune: one-shot expert pruning for Mixture-of-Experts models in Hugging Face transformers.

Importing the package registers the `moe_prune` quantization method, so that
`from_pretrained(path, pruning_config=MoEPruneConfig(...))` (or `quantization_config=`) prunes while loading.
"""

__version__ = "0.1.0"

from .adapters import ADAPTERS, MoEAdapter, find_blocks  # noqa: E402
from .api import apply_plan, prune  # noqa: E402
from .config import MoEPruneConfig  # noqa: E402
from .hub import push_to_hub  # noqa: E402
from .integration import MoEPruneHfQuantizer, register  # noqa: E402
from .methods import METHODS, register_method  # noqa: E402
from .plan import BlockPlan, PrunePlan  # noqa: E402
from .registries import ALLOCATIONS, COMPENSATIONS, register_allocation, register_compensation  # noqa: E402
from .saving import save_pruned  # noqa: E402
from .streaming import stream_prune  # noqa: E402

register()

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
    "__version__",
    "apply_plan",
    "find_blocks",
    "prune",
    "push_to_hub",
    "register_allocation",
    "register_compensation",
    "register_method",
    "save_pruned",
    "stream_prune",
]
