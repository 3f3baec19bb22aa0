"""Which Mixture-of-Experts families of the installed transformers hf_moe_prune supports.

`python -m hf_moe_prune.families` prints the table for the transformers you have: every `model_type` whose config
counts more than one expert (the text decoder of a multimodal model counts under its own `model_type`), with its
status: supported (an adapter), unsupported (with the reason), or unknown (new in this transformers: an adapter may
be one small file, see docs/adding_a_family.md).
"""

from __future__ import annotations

import logging
import warnings

from hf_moe_prune.adapters import ADAPTERS
from hf_moe_prune.adapters.base import UNSUPPORTED

# Config keys that count experts (one of them in every family transformers has, DBRX's nested one aside)
COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def _counts_experts(config) -> bool:
    values = config.to_dict()
    ffn = values.get("ffn_config") or {}  # DBRX keeps it nested
    counts = [values.get(key) for key in COUNT_KEYS] + [ffn.get("moe_num_experts") if isinstance(ffn, dict) else None]
    return any(isinstance(v, int) and not isinstance(v, bool) and v > 1 for v in counts)


def expert_families() -> dict[str, str]:
    """`{model_type: status}` for every family of the installed transformers whose (sub-)config counts experts.

    The status is `"supported"`, `"unsupported: <reason>"` or `"unknown"`. Configs are built with their defaults, so
    this takes a few seconds and reads no weights.
    """
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    found = set()
    quiet = logging.getLogger("transformers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # default configs of some families warn about their own special token ids
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for model_type in CONFIG_MAPPING_NAMES:
                try:
                    config = AutoConfig.for_model(model_type)
                except Exception:  # a few configs do not build from their defaults alone
                    continue
                for sub in (config, getattr(config, "text_config", None)):
                    if sub is not None and not isinstance(sub, dict) and _counts_experts(sub):
                        found.add(getattr(sub, "model_type", None) or model_type)
    finally:
        quiet.setLevel(level)
    found |= set(ADAPTERS.names())  # families whose config counts experts only inside a parent (step3p5)
    return {
        name: "supported"
        if name in ADAPTERS
        else f"unsupported: {UNSUPPORTED[name]}"
        if name in UNSUPPORTED
        else "unknown"
        for name in sorted(found)
    }


def main() -> None:
    import transformers

    families = expert_families()
    supported = sum(status == "supported" for status in families.values())
    print(f"transformers {transformers.__version__}: {supported} of {len(families)} MoE families supported")
    for name, status in families.items():
        print(f"  {name:32} {status}")


if __name__ == "__main__":
    main()
