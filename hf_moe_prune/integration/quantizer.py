"""`MoEPruneConfig` as a transformers quantization method (`quantization_config=` / `pruning_config=`).

The quantizer only calls the library: before weights load it checks the request on the meta skeleton and tokenizes
the calibration data (so bad input fails before any weight is read), or, for a non-uniformly pruned checkpoint, shrinks
the skeleton to the saved per-layer expert counts; after weights load it runs `hf_moe_prune.prune`. Uniformly pruned
models then drop the quantizer identity so they save as stock checkpoints that plain transformers and vLLM load.
"""

from __future__ import annotations

import logging

from transformers import PreTrainedModel
from transformers.quantizers import HfQuantizer

from hf_moe_prune.adapters import find_blocks
from hf_moe_prune.api import PruneJob, prepare, run
from hf_moe_prune.config import MoEPruneConfig
from hf_moe_prune.export.attach import attach_plan
from hf_moe_prune.pipeline.checks import check_pruned_metadata, check_saved_plan
from hf_moe_prune.plan import PLAN_FILE, PrunePlan
from hf_moe_prune.reshape import slice_block
from hf_moe_prune.reshape.grouped import narrow_experts

logger = logging.getLogger(__name__)


class MoEPruneHfQuantizer(HfQuantizer):
    """Prunes routed experts while `from_pretrained` loads a model, and reloads non-uniformly pruned checkpoints."""

    requires_calibration = False

    def __init__(self, quantization_config: MoEPruneConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self._job: PruneJob | None = None

    def _process_model_before_weight_loading(self, model, **kwargs):
        config = self.quantization_config
        if self.pre_quantized:
            if config.is_pruned_checkpoint:
                _shrink_skeleton(model, config.experts_per_layer, config.expert_widths)
        else:
            self._job = prepare(model, config, device_map=kwargs.get("device_map"))
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        if self.pre_quantized:
            plan = _saved_plan(model)
            if plan is not None:
                attach_plan(model, plan)
            return model
        job, self._job = self._job, None
        plan = run(model, job)
        if plan.is_uniform:  # a stock model again: no quantizer, no quantization_config, nothing "quantized"
            self.remove_quantization_config(model)
            for module in model.modules():
                if isinstance(module, PreTrainedModel):
                    module.config._is_quantized = False
        return model

    def is_serializable(self, safe_serialization=None) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_qat_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


def _shrink_skeleton(model, experts_per_layer: dict[str, int], expert_widths: dict[str, list[int]]) -> None:
    blocks = {b.name: b for b in find_blocks(model)}
    # The counts come from a possibly untrusted config.json: bounded by the skeleton's own shapes before any range().
    check_pruned_metadata(list(blocks.values()), experts_per_layer, expert_widths)
    experts_per_layer, expert_widths = experts_per_layer or {}, expert_widths or {}
    for name, count in experts_per_layer.items():
        # Which experts were kept does not matter here: the checkpoint holds exactly `count` of them, renumbered.
        slice_block(blocks[name], list(range(count)))
    for name, widths in expert_widths.items():
        # Likewise the neurons: the checkpoint holds the kept ones, renumbered; only the widths shape the skeleton.
        narrow_experts(blocks[name], list(range(len(widths))), {e: list(range(w)) for e, w in enumerate(widths)})


def _saved_plan(model) -> PrunePlan | None:
    from transformers.utils import cached_file

    try:
        path = cached_file(model.config.name_or_path, PLAN_FILE, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    if not path:
        return None
    plan = PrunePlan.load(path)  # checked; a re-save writes its counts, so it must describe these weights
    check_saved_plan(plan, find_blocks(model), str(path))
    return plan
