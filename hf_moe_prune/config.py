"""`MoEPruneConfig`: what to prune and how, usable as a transformers quantization config."""

from __future__ import annotations

import copy
import inspect
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from hf_moe_prune.config_checks import check_budget_fields, check_portable
from hf_moe_prune.healing_options import healing_options
from hf_moe_prune.registries import (
    ALLOCATIONS,
    COMPENSATIONS,
    DEFAULT_ALLOCATION,
    DEFAULT_COMPENSATION,
    DEFAULT_METHOD,
    METHODS,
    SCHEDULE_KEYS,
    UNITS,
    check_search_request,
    names_for,
)
from hf_moe_prune.registry import refuse_unknown_keywords
from hf_moe_prune.statistics_options import check_statistics_option, describe_statistics

QUANT_METHOD = "moe_prune"

# Runtime-only fields: data and objects that must not be deep-copied by from_pretrained nor written to config.json.
_RUNTIME_FIELDS = ("calibration", "tokenizer", "statistics")


class MoEPruneConfig(QuantizationConfigMixin):
    """Configuration of a one-shot expert pruning run.

    Pass it to `hf_moe_prune.prune(model, config)`, or to `from_pretrained(..., pruning_config=config)` (equivalently
    `quantization_config=config`) to prune while loading.

    Args:
        method (`str`, *optional*, defaults to `"reap"`):
            Expert scoring method: one of `hf_moe_prune.METHODS` (`frequency`, `soft_count`, `ean`, `reap`,
            `random`, ...).
        ratio (`float`, *optional*):
            Fraction of the routed experts to remove, in (0, 1). `ratio=0.5` keeps half of the experts of every layer.
            With `unit="neuron"`: the fraction of routed-expert parameters removed (met exactly, to the neuron).
        num_experts_to_keep (`int`, *optional*):
            Number of routed experts each layer keeps (instead of `ratio`).
        allocation (`str`, `list[int]` or `dict[int, int]`, *optional*, defaults to `"uniform"`):
            How many experts each MoE layer keeps: a registered allocation (`hf_moe_prune.ALLOCATIONS`: `"uniform"`,
            the same in every layer; `"global"`, per-layer-normalized scores ranked across layers; `"outlier"`,
            COMPEL's OWL-style layer outlier ratios; `"learned"`, scores already comparable across layers, as DiEP's),
            or explicit per-layer keep counts, as a list in MoE-layer order or a dict `{decoder_layer_index: count}`.
            The adaptive allocations keep exactly `total − floor(ratio × total)` experts over the model, each layer
            at least top-k. Defaults to the method's own (`uniform` except for `compel`/`diep`).
        compensation (`str`, *optional*):
            Adjustment of the kept experts after pruning: `"none"`, `"merge"`, `"fisher"`. Defaults to the method's
            own (`none` except for `compel`).
        calibration (*optional*):
            Calibration data: a list of strings, a `datasets.Dataset` (column `text`), a path to a `.txt`/`.jsonl` file
            or a folder of them, an iterable of strings, a tensor of token ids (`[rows, seq_len]`, or 1-D, packed),
            or a Hub dataset name (needs network). Not written to config.json.
        num_samples (`int`, *optional*, defaults to 128): Number of packed calibration rows of `seq_len` tokens.
        eval_fraction (`float`, *optional*, defaults to 0.1):
            Share of the `num_samples` calibration rows held out to measure the result: `max(1, round(eval_fraction ×
            rows))` evenly spaced rows (when there are at least 2) are never used for scoring, which uses the rest; on
            them the pruned model is compared with the unpruned one (KL divergence, top-1 agreement,
            perplexity of both: `PrunePlan.quality`). In [0, 1); `0` scores with every row and measures nothing.
        time_budget (`float`, *optional*):
            Seconds the `method="auto"` / `allocation="auto"` search may spend judging candidate plans on the held-out
            rows (the first candidate is always judged). Defaults to 3 × the calibration pass.
        healing (`int` or `dict`, *optional*):
            After the experts are removed, distil the pruned model toward the unpruned one on the scoring rows (KL on
            the next-token distribution; the held-out rows only decide when to stop): a number of steps, or a dict
            of options (`steps`, `lr`, `batch_size`, `train`, `top_k`, `eval_every`, `patience`, `keep_best`, `lora`
            (LoRA adapters through peft, merged after training: `True` or `{"r": 8, "alpha": 16}`), ..., see
            `hf_moe_prune.healing_options.HEALING_DEFAULTS`). Off by default.
        statistics (*optional*):
            Decide from statistics gathered earlier instead of calibrating: a folder written by `stats.save(path)` /
            `hf-moe-prune calibrate`, the object `hf_moe_prune.calibrate` returned, or a dict `{name: folder}` of
            several calibration sets combined with `statistics_weights` (see `hf_moe_prune.statistics`). Methods that
            need more than sums (gradients, searches) say so and calibrate.
        statistics_weights (`dict[str, float]`, *optional*): Weight of each set in a `statistics` dict (equal when
            not given; each set's share of the tokens reproduces calibrating on the concatenated data).
        seq_len (`int`, *optional*, defaults to 512): Tokens per calibration row.
        batch_size (`int`, *optional*, defaults to 8): Rows per forward pass.
        seed (`int`, *optional*, defaults to 0): Seed for row sampling and for the `random` method.
        ignore (`list[str | int]`, *optional*):
            MoE layers left alone: decoder-layer indices, or glob patterns on the block's module name
            (e.g. `"model.layers.0.*"`).
        method_kwargs (`dict`, *optional*): Extra options for the scoring method; with `unit="neuron"` also the neuron
            schedule: `keep_whole`, `neuron_keep` (the trapezoid's `(shallow, deep)` endpoints), `drop_experts`,
            `neuron_score`, `min_neurons` (see `hf_moe_prune.allocation.neurons`).
        unit (`str`, *optional*):
            What is pruned: `"expert"` (whole experts) or `"neuron"` (intermediate neurons inside the less important
            experts, every expert stays reachable; combine with whole experts through `method_kwargs["drop_experts"]`).
            Defaults to the method's own (`neuron` for `tenp`, `expert` for the others). Neuron allocations are
            `"trapezoid"` (TENP's, its default) and `"uniform"`.
        streaming (`bool`, *optional*):
            With `from_pretrained(path, pruning_config=...)`: decide the plan layer by layer from the checkpoint files
            and then read only the kept experts, so the full model is never in memory (see `hf_moe_prune.streaming`;
            forward-statistics methods only). `None` (the default) streams whenever the request allows it (a
            safetensors checkpoint, a method, allocation and compensation that need no whole model, loading options
            streaming honours) and otherwise loads the whole model first; `True` insists (an error says why it cannot);
            `False` always loads the whole model first. `prune(model, ...)` on a model in memory never streams.
        propagation (`str`, *optional*, defaults to `"dense"`):
            With `streaming=True`: what each layer sees during calibration: the unpruned previous layers' outputs
            (`"dense"`, the same statistics as a full forward) or the already pruned ones (`"pruned"`).
        portable (`bool`, *optional*, defaults to `False`): Only plans whose checkpoint stock transformers (and vLLM,
            SGLang, llama.cpp, the Optimum exporters, the quantizers) load without this library: the same number of
            whole experts in every layer. Per-layer allocations and neuron pruning are refused, a method's own
            per-layer default allocation becomes `"uniform"`, and `auto` searches uniform plans only.
        tokenizer (*optional*): Tokenizer for text calibration data; by default loaded from the model's path.
    """

    def __init__(
        self,
        method: str = DEFAULT_METHOD,
        ratio: float | None = None,
        num_experts_to_keep: int | None = None,
        allocation: str | list[int] | dict[int, int] | None = None,
        compensation: str | None = None,
        calibration: Any = None,
        num_samples: int = 128,
        seq_len: int = 512,
        batch_size: int = 8,
        seed: int = 0,
        ignore: list[str | int] | None = None,
        method_kwargs: dict[str, Any] | None = None,
        tokenizer: Any = None,
        experts_per_layer: dict[str, int] | None = None,
        unit: str | None = None,
        expert_widths: dict[str, list[int]] | None = None,
        streaming: bool | None = None,
        propagation: str = "dense",
        eval_fraction: float = 0.1,
        time_budget: float | None = None,
        healing: int | dict[str, Any] | None = None,
        statistics: Any = None,
        statistics_weights: dict[str, float] | None = None,
        portable: bool = False,
        **kwargs,
    ):
        self.quant_method = QUANT_METHOD
        self.method = method
        self.ratio = ratio
        self.num_experts_to_keep = num_experts_to_keep
        self.allocation = allocation
        self.compensation = compensation
        self.calibration = calibration
        self.num_samples = num_samples
        self.eval_fraction = eval_fraction
        self.time_budget = time_budget
        self.healing = healing
        self.statistics = statistics
        self.statistics_weights = statistics_weights
        self.portable = portable
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        # One pattern or index given alone is one entry (a string would otherwise split into characters, and "*"
        # would then match every layer).
        self.ignore = [ignore] if isinstance(ignore, (str, int)) else list(ignore or [])
        if not isinstance(method_kwargs, (dict, type(None))):
            raise TypeError(f"method_kwargs must be a dict of method options, got {type(method_kwargs).__name__}.")
        self.method_kwargs = dict(method_kwargs or {})
        self.tokenizer = tokenizer
        # Per-block expert counts of a pruned checkpoint; set when a non-uniform result is saved, read on reload.
        self.experts_per_layer = experts_per_layer
        self.unit = unit
        # Per-block intermediate width of every kept expert of a neuron-pruned checkpoint; read on reload.
        self.expert_widths = expert_widths
        self.streaming = streaming
        self.propagation = propagation
        kwargs.pop("quant_method", None)
        if kwargs and not self.is_pruned_checkpoint:
            # A misspelled option must not be accepted and ignored; only a saved checkpoint's config (a reload) may
            # carry keys written by a newer version of the library.
            valid = [name for name in inspect.signature(MoEPruneConfig.__init__).parameters if name != "self"]
            refuse_unknown_keywords("MoEPruneConfig", kwargs, [name for name in valid if name != "kwargs"])
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.post_init()

    @property
    def is_pruned_checkpoint(self) -> bool:
        """True when this config describes an already pruned checkpoint (reload), not a pruning to run."""
        return self.experts_per_layer is not None or self.expert_widths is not None

    def post_init(self) -> None:
        """Check every field and raise a `ValueError` that names the problem and the fix."""

        for name in ("method", "allocation", "compensation", "unit", "propagation"):
            value = getattr(self, name)
            if isinstance(value, str):  # names are case-insensitive; everything after compares lower-case names
                setattr(self, name, value.strip().lower())
        if not isinstance(self.method, str):
            raise TypeError(f"method must be a method name (a string), got {self.method!r}.")
        method = METHODS.get(self.method)  # raises with the list of methods
        if self.unit is None:
            self.unit = method.unit
        if self.unit not in UNITS:
            raise ValueError(f"unit must be 'expert' (whole experts) or 'neuron' (expert neurons), got {self.unit!r}.")
        if self.allocation is None:  # the method's own default, if it serves this unit (else uniform)
            default = ALLOCATIONS.get(method.default_allocation)
            per_layer = not (default.fixed_counts or default.searches)
            fits = self.unit in default.units and not (getattr(self, "portable", False) and per_layer)
            self.allocation = default.name if fits else DEFAULT_ALLOCATION
        if self.compensation is None:
            default = COMPENSATIONS.get(method.default_compensation)
            self.compensation = default.name if self.unit in default.units else DEFAULT_COMPENSATION
        if not isinstance(self.compensation, str):
            raise TypeError(f"compensation must be a name, got {self.compensation!r}.")
        compensator = COMPENSATIONS.get(self.compensation)  # raises with the list of compensations
        if self.unit not in compensator.units:
            raise ValueError(
                f"compensation={self.compensation!r} does not work with unit={self.unit!r}; use "
                + " or ".join(f"compensation={name!r}" for name in names_for(COMPENSATIONS, self.unit))
                + "."
            )
        explicit = not isinstance(self.allocation, str)
        if not explicit:
            if self.allocation not in ALLOCATIONS:
                raise ValueError(
                    f"allocation={self.allocation!r} is not supported; use one of {ALLOCATIONS.names()} or explicit "
                    "per-layer keep counts (a list in MoE-layer order or a dict {layer_index: count})."
                )
            units = ALLOCATIONS.get(self.allocation).units
            if self.unit not in units:
                decides = "shapes neuron pruning" if self.unit == "expert" else "decides whole-expert counts"
                raise ValueError(
                    f"allocation={self.allocation!r} {decides}: use it with unit={units[0]!r}, or with "
                    f"unit={self.unit!r} one of {names_for(ALLOCATIONS, self.unit)}."
                )
        check_budget_fields(self, explicit)
        check_portable(self, explicit)
        if not self.is_pruned_checkpoint:
            check_search_request(self)
            self.healing = healing_options(self.healing)
            check_statistics_option(self.statistics, self.statistics_weights)
        if self.streaming is not None and not isinstance(self.streaming, bool):
            raise ValueError(f"streaming must be True, False or None (automatic), got {self.streaming!r}.")
        if self.propagation not in ("dense", "pruned"):
            raise ValueError(f"propagation must be 'dense' or 'pruned', got {self.propagation!r}.")
        if not all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in self.ignore):
            raise ValueError(f"ignore must list layer indices or module-name patterns, got {self.ignore!r}.")
        if not self.is_pruned_checkpoint:
            if self.unit == "expert":
                wrong = sorted(set(self.method_kwargs) & set(SCHEDULE_KEYS) - set(method.option_names()))
                if wrong:
                    raise ValueError(
                        f"method_kwargs {wrong} shape neuron pruning; with unit='expert' they would be ignored: use "
                        "unit='neuron', or leave them out."
                    )
            method.check_options(self.method_kwargs, SCHEDULE_KEYS if self.unit == "neuron" else ())

    def to_dict(self) -> dict[str, Any]:
        """Serializable fields (calibration data and tokenizer are runtime-only and left out)."""
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k not in _RUNTIME_FIELDS}
        if getattr(self, "statistics", None) is not None:
            out["statistics"] = describe_statistics(self.statistics)
        if isinstance(out.get("allocation"), dict):  # JSON keys are strings; keep them readable back as ints
            out["allocation"] = {str(k): v for k, v in out["allocation"].items()}
        return out

    def __iter__(self):
        yield from self.to_dict().items()

    def __deepcopy__(self, memo: dict) -> MoEPruneConfig:
        # from_pretrained deep-copies its kwargs several times: share the calibration data (a generator or a large
        # Dataset must be neither copied nor exhausted) and copy the rest.
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = value if key in _RUNTIME_FIELDS else copy.deepcopy(value, memo)
        return new

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MoEPruneConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable
