"""transformers integration: the `moe_prune` quantization method (`quantizer`), `from_pretrained(...,
pruning_config=...)` (`loading`, the library's one global patch), the marked-config dispatcher, and Optimum exports
(`optimum`). `register()` runs when `hf_moe_prune` is imported."""

from transformers.quantizers import register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

from hf_moe_prune.config import QUANT_METHOD, MoEPruneConfig
from hf_moe_prune.export.portable import register_marker
from hf_moe_prune.integration.loading import install_from_pretrained
from hf_moe_prune.integration.quantizer import MoEPruneHfQuantizer

__all__ = ["MoEPruneHfQuantizer", "register"]


def register() -> None:
    """Register the `moe_prune` quantization method with transformers and accept `pruning_config=` (idempotent)."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not MoEPruneConfig:
        AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)  # a re-import (e.g. importlib.reload) re-registers
        register_quantization_config(QUANT_METHOD)(MoEPruneConfig)
    if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not MoEPruneHfQuantizer:
        AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
        register_quantizer(QUANT_METHOD)(MoEPruneHfQuantizer)
    register_marker()
    install_from_pretrained()
