"""Compensate: adjust the kept experts after pruning so that the layer output changes least.

A compensator is `compensate(block, kept, context)`, called on the still unpruned block just before it is sliced.
`context` is a `CompensationContext`: the block's calibration statistics and, for compensators that declare
`needs_inputs = True`, a sample of the block's calibration inputs (collected only then, in one extra no-grad pass).

- `none`: leave the kept experts as they are.
- `merge`: fold each pruned expert into the kept expert whose router row is most similar (cosine), by usage-weighted
  averaging of the weights (usage = soft counts, i.e. the summed gates, else token counts, else equal).
- `fisher`: COMPEL's Fisher-guided compensation (our reading, see `fisher_compensation`).
- `auto`: a search: each compensation that can be undone, judged on the held-out rows (`hf_moe_prune.pipeline.auto`).

One module per compensator, each registered in `hf_moe_prune.COMPENSATIONS` with a record of what it needs
(`hf_moe_prune.registries.Compensator`).
"""

from hf_moe_prune.calibration.recorders import BlockInputRecorder
from hf_moe_prune.compensation import auto, fisher, merge, none  # noqa: F401  (register)
from hf_moe_prune.compensation.base import CompensationContext, check_compensation, needs_inputs
from hf_moe_prune.compensation.fisher import fisher_compensation, reconstruction_error
from hf_moe_prune.compensation.merge import merge_compensation
from hf_moe_prune.compensation.none import no_compensation
from hf_moe_prune.registries import COMPENSATIONS

__all__ = [
    "COMPENSATIONS",
    "BlockInputRecorder",
    "CompensationContext",
    "check_compensation",
    "fisher_compensation",
    "merge_compensation",
    "needs_inputs",
    "no_compensation",
    "reconstruction_error",
]
