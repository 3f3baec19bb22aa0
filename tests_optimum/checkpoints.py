"""Pruned checkpoints for the Optimum tests, each with the PyTorch reference it must reproduce (`reference.pt`).

Needs transformers 5 (the library's pruning path). `run.sh` runs it in the main environment, so the ONNX Runtime
environment (transformers 4.57) gets checkpoints made by the newest transformers; the OpenVINO tests build their own
in-process (transformers 5.5) when `HF_MOE_PRUNE_OPTIMUM_CHECKPOINTS` is not set.

    python tests_optimum/checkpoints.py OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ENV = "HF_MOE_PRUNE_OPTIMUM_CHECKPOINTS"
REFERENCE = "reference.pt"
NEW_TOKENS = 24
# Greedy, and never stopped early by EOS, so every backend produces the same number of tokens.
GENERATE = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
QWEN_PROMPTS = [
    "def read_config(path):\n    ",
    "The standard library provides",
    "import os\nimport sys\n\nclass ",
]
MIXTRAL_PROMPTS = ["Pruning removes the experts", "def route(tokens, experts, k=2):\n    "]
# name -> (source, pruning options)
CHECKPOINTS = {
    "qwen3_moe": ("fixture", {"ratio": 0.5}),
    "qwen3_moe_nonuniform": ("fixture", {"allocation": [12, 10, 8, 6]}),
    "mixtral": ("tiny", {"ratio": 0.5}),
    # the other families the ONNX Runtime exporter takes: their pruned checkpoints must load in transformers 4.57
    "deepseek_v3": ("tiny", {"ratio": 0.5}),
    "gpt_oss": ("tiny", {"ratio": 0.5}),
}


def _prune(name: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_moe_prune
    from hf_moe_prune import MoEPruneConfig
    from hf_moe_prune.export.saving import save_tokenizer
    from hf_moe_prune.testing import SAMPLE_TEXT, fixture_path, mixed_texts, tiny_model, tiny_tokenizer

    source, options = CHECKPOINTS[name]
    if source == "fixture":
        path = fixture_path("qwen3_moe")
        tokenizer = AutoTokenizer.from_pretrained(path)
        config = MoEPruneConfig(method="reap", calibration=mixed_texts(), num_samples=8, seq_len=128, **options)
        model = AutoModelForCausalLM.from_pretrained(path, pruning_config=config)
    else:
        tokenizer = tiny_tokenizer()
        # The held-out measurement runs the pruned model in memory: under the OpenVINO environment's older
        # transformers that needs DeepseekV3MoE.n_routed_experts sliced too (`MoEAdapter.count_attrs`).
        config = MoEPruneConfig(method="reap", calibration=[SAMPLE_TEXT] * 8, num_samples=4, seq_len=64, **options)
        model = tiny_model(name)
        hf_moe_prune.prune(model, config, tokenizer=tokenizer)
    model.save_pretrained(out)
    save_tokenizer(tokenizer, out)


def reference(path: Path) -> dict:
    """Logits of every prompt and its greedy continuation, from PyTorch (this environment's transformers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_moe_prune  # noqa: F401  (non-uniform checkpoints need the quantizer)

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = MIXTRAL_PROMPTS if model.config.model_type == "mixtral" else QWEN_PROMPTS
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            logits = model(**ids).logits[0]
            greedy = model.generate(**ids, **GENERATE)
        rows.append({"prompt": prompt, "input_ids": ids["input_ids"][0], "logits": logits, "greedy": greedy[0]})
    return {"rows": rows, "transformers": __import__("transformers").__version__}


def build(root: str | os.PathLike) -> dict[str, Path]:
    """Prune and save every checkpoint under `root` (skipping those already there) with its `reference.pt`."""
    out = {}
    for name in CHECKPOINTS:
        path = Path(root) / name
        if not (path / REFERENCE).is_file():
            _prune(name, path)
            torch.save(reference(path), path / REFERENCE)
        out[name] = path
    return out


def existing(root: str | os.PathLike) -> dict[str, Path]:
    """The checkpoints `build` wrote under `root`; raise if one is missing."""
    out = {name: Path(root) / name for name in CHECKPOINTS}
    missing = [name for name, path in out.items() if not (path / REFERENCE).is_file()]
    if missing:
        raise FileNotFoundError(f"{root} lacks {missing}; run `python tests_optimum/checkpoints.py {root}` first.")
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name, path in build(sys.argv[1]).items():
        print(f"{name}: {path}")
