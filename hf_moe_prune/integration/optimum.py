"""Pruned checkpoints in Optimum pipelines: OpenVINO (optimum-intel) and ONNX Runtime (optimum-onnx).

Each backend pins transformers, so each lives in its own environment (README, "Optimum"):

- OpenVINO: optimum-intel 2.2 + openvino, with transformers 5.5.x (`pip install 'hf-moe-prune[optimum]'`).
- ONNX Runtime: optimum-onnx 0.1.0 + onnxruntime, with transformers 4.57.6 and optimum 2.1 (hf_moe_prune installed
  with `--no-deps`). Only uniform checkpoints: transformers 4.57 cannot build a non-uniform skeleton.

A uniform checkpoint is a stock checkpoint, so it goes through Optimum's own export (`from_pretrained(path,
export=True)`). A non-uniform one is loaded by transformers with this library (its quantizer shrinks the skeleton per
layer), its `quantization_config` is dropped, and the model in memory is exported: the OpenVINO frontend would
otherwise try to handle `moe_prune` as a weight quantization and log "Unknown quantization type".
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hf_moe_prune.export.portable import is_pruned_config, unmark_config_dict

ACCELERATORS = {"openvino": "openvino", "ov": "openvino", "ort": "ort", "onnxruntime": "ort"}
TASK = "text-generation"
_EXPORTED = {"openvino": "openvino_model.xml", "ort": "model.onnx"}
_NAMES = {"openvino": "OpenVINO (optimum-intel)", "ort": "ONNX Runtime (optimum-onnx)"}
_INSTALL = {
    "openvino": (
        "optimum-intel 2.2 and openvino pin transformers<5.6, so they need their own environment: "
        "`python -m venv ov && ov/bin/pip install torch==2.13.0 && echo torch==2.13.0 > c.txt && "
        "ov/bin/pip install -c c.txt 'hf-moe-prune[optimum]' torchvision==0.28.0 && ov/bin/pip uninstall -y "
        "torchvision` (README, 'Optimum')."
    ),
    "ort": (
        "optimum-onnx 0.1.0 pins transformers<4.58 and optimum~=2.1.0, so it needs its own environment: "
        "`python -m venv ort && ort/bin/pip install torch==2.13.0 && echo torch==2.13.0 > c.txt && ort/bin/pip "
        "install -c c.txt 'optimum-onnx[onnxruntime]==0.1.0' tqdm jinja2 safetensors huggingface-hub accelerate && "
        "ort/bin/pip install --no-deps hf-moe-prune` (README, 'Optimum')."
    ),
}


class OptimumBackendError(ImportError):
    """The requested Optimum backend is not installed in this environment."""


def backend(accelerator: str) -> str:
    """Canonical backend name (`"openvino"` or `"ort"`) of `accelerator`; `"ov"` and `"onnxruntime"` are accepted."""
    name = ACCELERATORS.get(str(accelerator).lower())
    if name is None:
        raise ValueError(f"accelerator must be one of {sorted(ACCELERATORS)}, got {accelerator!r}.")
    return name


def require(accelerator: str) -> str:
    """Check that the backend's packages import here; raise `OptimumBackendError` saying how to install them."""
    name = backend(accelerator)
    modules = ("optimum.intel", "openvino") if name == "openvino" else ("optimum.onnxruntime", "onnxruntime")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise OptimumBackendError(
                f"accelerator={accelerator!r} needs `{module}`, which does not import here ({error}). "
                + _INSTALL[name]
            ) from error
    return name


def supported_families(accelerator: str) -> list[str]:
    """The MoE families this library prunes that the backend's exporter exports for text generation."""
    from hf_moe_prune.adapters import ADAPTERS

    name = require(accelerator)
    importlib.import_module(
        "optimum.exporters.openvino" if name == "openvino" else "optimum.exporters.onnx.model_configs"
    )
    return [family for family in ADAPTERS.names() if _exportable(family, name)]


def _exportable(model_type: str, name: str) -> bool:
    from optimum.exporters.tasks import TasksManager

    exporter = "openvino" if name == "openvino" else "onnx"
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(
            model_type, exporter=exporter, library_name="transformers"
        )
    except KeyError:
        return False
    return TASK in tasks


def _read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} is not a checkpoint folder (no config.json). Pass the folder a pruned model was saved to; "
            "Hub ids are not resolved here: download the repository first."
        )
    # a checkpoint only hf_moe_prune loads carries a marked config (`hf_moe_prune.export.portable`): read the
    # family's own
    return unmark_config_dict(json.loads(file.read_text(encoding="utf-8")))


def is_non_uniform(config: dict[str, Any]) -> bool:
    """True for a checkpoint whose layers keep different expert counts (it has a `moe_prune` quantization config)."""
    return is_pruned_config(config)


def _check_exportable(path: Path, name: str) -> None:
    config = _read_config(path)
    model_type = config.get("model_type")
    if not _exportable(model_type, name):
        raise ValueError(
            f"The {_NAMES[name]} exporter cannot export {model_type!r} models for {TASK}. MoE families it exports: "
            f"{', '.join(supported_families(name))}."
            + (" OpenVINO exports more of them (accelerator='openvino')." if name == "ort" else "")
        )
    if name == "ort" and is_non_uniform(config):
        raise ValueError(
            f"{path} was pruned non-uniformly (different expert counts per layer, `quant_method: moe_prune`). "
            "Loading it needs transformers 5 and hf_moe_prune to shrink the model per layer, but the ONNX Runtime "
            "exporter (optimum-onnx 0.1.0) runs only on transformers 4.57. Export it with accelerator='openvino', or "
            "prune uniformly (`ratio=` or `num_experts_to_keep=`) for ONNX Runtime."
        )


def load_tokenizer(tokenizer: Any, path: str | os.PathLike):
    """`tokenizer`, or the one saved in `path`, returning only `input_ids` and `attention_mask`.

    Decoder-only models take no `token_type_ids`; transformers 4.57's `generate` rejects them ("model_kwargs are not
    used by the model"), and a `PreTrainedTokenizerFast` built without `model_input_names` returns them.
    """
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or path))
    if "token_type_ids" in tokenizer.model_input_names:
        tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n != "token_type_ids"]
    return tokenizer


def load_model(
    model: str | os.PathLike, accelerator: str = "openvino", save_dir: str | os.PathLike | None = None, **model_kwargs
):
    """Export a pruned checkpoint folder (or load an already exported one) as an Optimum causal-LM model.

    Args:
        model (`str` or `os.PathLike`): Folder of a pruned checkpoint (or of an OpenVINO / ONNX export of one).
        accelerator (`str`, *optional*, defaults to `"openvino"`): `"openvino"` (or `"ov"`) or `"ort"`.
        save_dir (`str` or `os.PathLike`, *optional*): Also save the exported model there, to load it later without
            exporting again (`load_model(save_dir, accelerator)`).
        model_kwargs: Passed to `OVModelForCausalLM` / `ORTModelForCausalLM.from_pretrained`, e.g.
            `ov_config={"INFERENCE_PRECISION_HINT": "f32"}` for OpenVINO logits equal to PyTorch's to ~1e-5 (the CPU
            default may compute in bf16).

    Returns:
        `OVModelForCausalLM` or `ORTModelForCausalLM`.
    """
    name = require(accelerator)
    path = Path(model)
    if name == "openvino":
        from optimum.intel import OVModelForCausalLM as model_class
    else:
        from optimum.onnxruntime import ORTModelForCausalLM as model_class
    if (path / _EXPORTED[name]).is_file():
        return model_class.from_pretrained(str(path), **model_kwargs)
    _check_exportable(path, name)
    if name == "openvino" and is_non_uniform(_read_config(path)):
        loaded = _openvino_non_uniform(path, model_class, model_kwargs)
    else:
        loaded = model_class.from_pretrained(str(path), export=True, **model_kwargs)
    if save_dir is not None:
        loaded.save_pretrained(str(save_dir))
    return loaded


def _openvino_non_uniform(path: Path, model_class, model_kwargs: dict[str, Any]):
    """Load with this library (the quantizer shrinks each layer), drop `quantization_config`, export from memory."""
    from optimum.exporters.openvino import export_from_model
    from transformers import AutoModelForCausalLM

    torch_model = AutoModelForCausalLM.from_pretrained(str(path))
    quantizer = getattr(torch_model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(torch_model)
    elif hasattr(torch_model.config, "quantization_config"):
        del torch_model.config.quantization_config
    workdir = tempfile.TemporaryDirectory(prefix="hf_moe_prune_ov_")
    export_from_model(
        torch_model, workdir.name, task=f"{TASK}-with-past", stateful=model_kwargs.get("use_cache", True)
    )
    del torch_model
    loaded = model_class.from_pretrained(workdir.name, **model_kwargs)
    loaded._hf_moe_prune_workdir = workdir  # the IR files live as long as the model
    return loaded


def pipeline(
    task: str = TASK,
    model: str | os.PathLike | None = None,
    accelerator: str = "openvino",
    tokenizer: Any = None,
    *,
    save_dir: str | os.PathLike | None = None,
    model_kwargs: dict[str, Any] | None = None,
    **kwargs,
):
    """An Optimum `text-generation` pipeline over a pruned checkpoint folder.

    `accelerator="openvino"` (or `"ov"`) builds the pipeline with `optimum.intel.pipeline(...,
    accelerator="openvino")`: `optimum.pipelines.pipeline(..., accelerator="ov")` is broken in optimum 2.3.0 +
    optimum-intel 2.2.0 (it forwards "ov", and optimum-intel accepts only "openvino"). `accelerator="ort"` uses
    `optimum.pipelines.pipeline(..., accelerator="ort")` (optimum 2.1). Either way the exported model is built here
    first (`load_model`), so non-uniform checkpoints work with OpenVINO too.

    Args:
        task (`str`, *optional*, defaults to `"text-generation"`): The only task of pruned causal LMs.
        model (`str` or `os.PathLike`): Folder of the pruned checkpoint (or of its OpenVINO / ONNX export).
        accelerator (`str`, *optional*, defaults to `"openvino"`): `"openvino"`, `"ov"` or `"ort"`.
        tokenizer (*optional*): A tokenizer or a folder; defaults to the one saved beside the model.
        save_dir (`str` or `os.PathLike`, *optional*): Also save the export (and tokenizer) there.
        model_kwargs (`dict`, *optional*): Passed to the Optimum model's `from_pretrained` (see `load_model`).
        kwargs: Passed to the pipeline (e.g. `device`).

    Returns:
        `transformers.TextGenerationPipeline` running the Optimum model.

    Example:
        ```python
        from hf_moe_prune.integration.optimum import pipeline
        pipe = pipeline("text-generation", "pruned/", accelerator="openvino")
        pipe("def fib(n):", max_new_tokens=32, do_sample=False)
        ```
    """
    name = require(accelerator)
    if task != TASK:
        raise ValueError(f"Pruned MoE checkpoints are causal LMs: task must be {TASK!r}, got {task!r}.")
    if model is None:
        raise ValueError("Pass `model`: the folder a pruned checkpoint was saved to.")
    tokenizer = load_tokenizer(tokenizer, model)
    optimum_model = load_model(model, name, save_dir=save_dir, **(model_kwargs or {}))
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    if name == "openvino":
        from optimum.intel import pipeline as ov_pipeline

        return ov_pipeline(task, model=optimum_model, tokenizer=tokenizer, accelerator="openvino", **kwargs)
    from optimum.pipelines import pipeline as optimum_pipeline

    return optimum_pipeline(task, model=optimum_model, tokenizer=tokenizer, accelerator="ort", **kwargs)
