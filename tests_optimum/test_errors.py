"""Errors of `hf_moe_prune.integration.optimum` that every environment can check (main, OpenVINO, ONNX Runtime)."""

import importlib.util

import pytest

from hf_moe_prune.integration.optimum import OptimumBackendError, backend, load_model, pipeline, require


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package is missing
        return False


def test_accelerator_names():
    assert backend("ov") == backend("OpenVINO") == "openvino"
    assert backend("ort") == backend("onnxruntime") == "ort"
    with pytest.raises(ValueError, match="accelerator must be one of"):
        backend("tensorrt")


@pytest.mark.parametrize(
    ("accelerator", "module", "hint"),
    [("openvino", "optimum.intel", r"hf-moe-prune\[optimum\]"), ("ort", "optimum.onnxruntime", "--no-deps")],
)
def test_missing_backend_names_the_environment(accelerator, module, hint, tmp_path):
    if _installed(module):
        assert require(accelerator) == backend(accelerator)
        return
    with pytest.raises(OptimumBackendError, match=f"own environment.*{hint}.*README"):
        pipeline("text-generation", tmp_path, accelerator=accelerator)


INSTALLED = [a for a, m in (("openvino", "optimum.intel"), ("ort", "optimum.onnxruntime")) if _installed(m)]


@pytest.mark.parametrize("accelerator", INSTALLED)  # each Optimum environment has exactly one backend
def test_bad_task_and_folder(accelerator, tmp_path):
    with pytest.raises(ValueError, match="task must be 'text-generation'"):
        pipeline("summarization", tmp_path, accelerator=accelerator)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path, accelerator)
