"""The `healing` option of `MoEPruneConfig`, checked before calibration (a leaf: the config imports it).

`healing=200` or `healing={"steps": 200, "lr": 3e-4, ...}`; see `HEALING_DEFAULTS` and `hf_moe_prune.healing`.
`healing={"steps": 200, "lora": {"r": 8, "alpha": 16}}` (or `"lora": True`) trains LoRA adapters through `peft`
instead of the weights (`LORA_DEFAULTS`, `hf_moe_prune.healing.lora`).
"""

from __future__ import annotations

import importlib.util
import numbers
from typing import Any

from hf_moe_prune.registry import closest

# What trains: the routed experts that remain, the routers, the shared experts, or every parameter.
TRAINABLE = ("experts", "routers", "shared", "all")

HEALING_DEFAULTS: dict[str, Any] = {
    "steps": 0,  # optimizer steps (0: off)
    "lr": 3e-4,  # AdamW learning rate (constant after a linear warm-up of `warmup` steps)
    "warmup": 10,
    "batch_size": None,  # rows per step (None: the config's `batch_size`)
    "train": ("experts", "routers", "shared"),
    "top_k": 32,  # teacher log-probs kept per token (memory tokens × k, not × vocabulary)
    "eval_every": 25,  # steps between held-out measurements (early stopping)
    "patience": 2,  # held-out measurements without improvement before stopping (0: never stop early)
    "keep_best": False,  # keep a CPU copy of the trained weights at the best held-out KL and end on it
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
    "lora": None,  # None/False: train the weights; True or a dict of `LORA_DEFAULTS` keys: LoRA adapters (peft)
}

LORA_DEFAULTS: dict[str, Any] = {
    "r": 8,  # rank of each update (per expert for fused expert tensors)
    "alpha": 16,  # the update is scaled by alpha / r
    "dropout": 0.0,  # on the input of nn.Linear adapters during training steps (peft has none for fused tensors)
}

# peft's names for the same options (`LoraConfig`), for the "did you mean" hint
PEFT_NAMES = {"rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}

PEFT_MISSING = (
    "healing with `lora` trains LoRA adapters through peft, which is not installed: "
    '`pip install "hf-moe-prune[healing]"` or `pip install peft`.'
)


def healing_options(value: Any) -> dict[str, Any] | None:
    """Normalise `MoEPruneConfig(healing=...)`: None/0/False is off (None); an int is a number of steps; a dict
    overrides `HEALING_DEFAULTS`.

    Raises:
        `ValueError` / `TypeError`: an unknown key (with the closest name) or a value out of range.
    """
    if (
        value is None
        or value is False
        or (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value == 0)
    ):
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = {"steps": int(value)}
    if not isinstance(value, dict):
        raise TypeError(f"healing must be a number of steps or a dict of options, got {value!r}.")
    unknown = [k for k in value if k not in HEALING_DEFAULTS]
    if unknown:
        close = closest(unknown[0], HEALING_DEFAULTS)
        hint = f" Did you mean {close!r}?" if close else ""
        raise ValueError(f"healing: unknown option {unknown[0]!r}; options are {list(HEALING_DEFAULTS)}.{hint}")
    options = {**HEALING_DEFAULTS, **value}
    for key in ("steps", "warmup", "eval_every", "patience", "top_k"):
        low = 1 if key in ("eval_every", "top_k") else 0
        if isinstance(options[key], bool) or not isinstance(options[key], numbers.Integral) or options[key] < low:
            raise ValueError(f"healing.{key} must be an integer >= {low}, got {options[key]!r}.")
        options[key] = int(options[key])
    for key in ("lr", "max_grad_norm", "weight_decay"):
        number = options[key]
        if isinstance(number, bool) or not isinstance(number, numbers.Real) or not number >= 0:
            raise ValueError(f"healing.{key} must be a number >= 0, got {number!r}.")
        options[key] = float(number)
    if options["lr"] <= 0:
        raise ValueError(f"healing.lr must be > 0, got {options['lr']!r}.")
    size = options["batch_size"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1):
        raise ValueError(f"healing.batch_size must be a positive integer or None, got {size!r}.")
    train = (options["train"],) if isinstance(options["train"], str) else tuple(options["train"])
    if not train or any(t not in TRAINABLE for t in train):
        raise ValueError(f"healing.train must name some of {list(TRAINABLE)}, got {options['train']!r}.")
    options["train"] = list(train)
    options["keep_best"] = bool(options["keep_best"])
    options["lora"] = lora_options(options["lora"], needs_peft=options["steps"] > 0)
    return options if options["steps"] > 0 else None


def lora_options(value: Any, needs_peft: bool = True) -> dict[str, Any] | None:
    """Normalise `healing["lora"]`: None/False is off (None); True is `LORA_DEFAULTS`; a dict overrides them.

    Raises:
        `ValueError` / `TypeError`: an unknown key (with the closest name) or a value out of range.
        `ImportError`: with `needs_peft` (healing on), peft is not installed (checked here, before calibration;
            imported only when healing runs).
    """
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise TypeError(f"healing.lora must be True, False or a dict of {list(LORA_DEFAULTS)}, got {value!r}.")
    unknown = [k for k in value if k not in LORA_DEFAULTS]
    if unknown:
        close = PEFT_NAMES.get(unknown[0]) or closest(unknown[0], LORA_DEFAULTS)
        hint = f" Did you mean {close!r}?" if close else ""
        raise ValueError(f"healing.lora: unknown option {unknown[0]!r}; options are {list(LORA_DEFAULTS)}.{hint}")
    lora = {**LORA_DEFAULTS, **value}
    r, alpha, dropout = lora["r"], lora["alpha"], lora["dropout"]
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1:
        raise ValueError(f"healing.lora.r must be an integer >= 1, got {r!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha > 0:
        raise ValueError(f"healing.lora.alpha must be a number > 0, got {alpha!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ValueError(f"healing.lora.dropout must be a number in [0, 1), got {dropout!r}.")
    if needs_peft and importlib.util.find_spec("peft") is None:  # finds the package without importing it
        raise ImportError(PEFT_MISSING)
    # alpha keeps its type: an int reads back from the plan's JSON as the same int
    alpha = int(alpha) if isinstance(alpha, numbers.Integral) else float(alpha)
    return {"r": int(r), "alpha": alpha, "dropout": float(dropout)}
