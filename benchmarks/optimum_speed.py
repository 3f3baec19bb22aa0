"""Generation speed of the pruned vs full trained qwen3_moe fixture in PyTorch, OpenVINO and ONNX Runtime.

Greedy, batch 1, a 16-token prompt, 64 new tokens, --threads CPU threads (default 1) in every backend; tokens/s is the
median of --repeats runs after a warm-up, the two models' runs alternating. Each
Optimum backend needs its own environment (README, "Optimum"; tests_optimum/run.sh builds them in .venvs/), so the
benchmark runs in steps that share one folder:

    python benchmarks/optimum_speed.py prune DIR                          # transformers 5: fixture + REAP 50% copy
    python benchmarks/optimum_speed.py run DIR --backend pytorch          # any environment: DIR/speed-*.json
    .venvs/ov/bin/python benchmarks/optimum_speed.py run DIR --backend openvino pytorch
    .venvs/ort/bin/python benchmarks/optimum_speed.py run DIR --backend ort pytorch
    python benchmarks/optimum_speed.py report DIR --write                 # the table, into benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

NEW_TOKENS = 64
PROMPT_TOKENS = 16
MODELS = ("full", "reap50")
BACKENDS = {
    "pytorch": ("PyTorch", "transformers", {}),
    "openvino": ("OpenVINO, CPU default precision", "optimum-intel", {}),
    "openvino-f32": (
        "OpenVINO, INFERENCE_PRECISION_HINT=f32",
        "optimum-intel",
        {"ov_config": {"INFERENCE_PRECISION_HINT": "f32"}},
    ),
    "ort": ("ONNX Runtime", "optimum-onnx", {}),
}


def prune(folder: Path) -> None:
    """Copy the fixture to `folder/full`, save its REAP 50% pruning to `folder/reap50`, and the prompt's token ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_moe_prune import MoEPruneConfig
    from hf_moe_prune.export.saving import save_tokenizer
    from hf_moe_prune.testing import fixture_path, fixture_texts, mixed_texts

    source = fixture_path("qwen3_moe")
    shutil.copytree(source, folder / "full", dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = MoEPruneConfig("reap", 0.5, calibration=mixed_texts(), num_samples=32, seq_len=256)
    AutoModelForCausalLM.from_pretrained(source, pruning_config=config).save_pretrained(
        folder / "reap50", overwrite=True
    )
    save_tokenizer(tokenizer, folder / "reap50")
    prompt = tokenizer(fixture_texts("code", "evaluation")[0])["input_ids"][:PROMPT_TOKENS]
    (folder / "prompt.json").write_text(json.dumps(prompt))


def _load(backend: str, path: Path, threads: int):
    if backend == "pytorch":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path).eval()
    from hf_moe_prune.integration.optimum import load_model

    kwargs = json.loads(json.dumps(BACKENDS[backend][2]))
    if backend == "ort":
        import onnxruntime

        kwargs["session_options"] = onnxruntime.SessionOptions()
        kwargs["session_options"].intra_op_num_threads = threads
        kwargs["session_options"].inter_op_num_threads = 1
        return load_model(path, "ort", **kwargs)
    kwargs.setdefault("ov_config", {})["INFERENCE_NUM_THREADS"] = str(threads)
    return load_model(path, "openvino", **kwargs)


def _generate_seconds(model, prompt: torch.Tensor) -> float:
    kwargs = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": 0}
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **kwargs)
    assert out.shape[1] == prompt.shape[1] + NEW_TOKENS
    return time.perf_counter() - start


def run(folder: Path, backend: str, repeats: int, threads: int) -> dict:
    """Tokens/s of both models; their runs alternate, so a change in the machine's load hits both alike."""
    prompt = torch.tensor([json.loads((folder / "prompt.json").read_text())])
    package = BACKENDS[backend][1]
    result = {
        "backend": backend,
        "versions": {p: importlib.metadata.version(p) for p in dict.fromkeys(("torch", "transformers", package))},
        "threads": threads,
    }
    models, times = {}, {name: [] for name in MODELS}
    for name in MODELS:
        start = time.perf_counter()
        models[name] = _load(backend, folder / name, threads)
        result[f"{name}_load_s"] = time.perf_counter() - start
        _generate_seconds(models[name], prompt)  # warm-up
    for _ in range(repeats):
        for name in MODELS:
            times[name].append(_generate_seconds(models[name], prompt))
    for name in MODELS:
        result[name] = NEW_TOKENS / statistics.median(times[name])
    tag = f"{backend}-transformers{result['versions']['transformers']}"
    (folder / f"speed-{tag}.json").write_text(json.dumps(result, indent=2))
    print(f"{tag}: full {result['full']:.1f} tok/s, reap50 {result['reap50']:.1f} tok/s")
    return result


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".") if part.isdigit())


def report(folder: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("speed-*.json"))]
    order = list(BACKENDS)
    results.sort(key=lambda r: (order.index(r["backend"]), _version(r["versions"]["transformers"])))
    lines = [
        f"qwen3_moe trained fixture, full (16 experts/layer) vs REAP 50% (8 experts/layer, pruned by transformers 5); "
        f"greedy, batch 1, {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new tokens, {results[0]['threads']} CPU "
        "thread(s) per backend, median tokens/s. Each backend ran in its own environment (versions in the table); "
        "export + load time is that of the REAP 50% model. Steps: `optimum_speed.py prune DIR` (main environment), "
        "then `optimum_speed.py run DIR --backend ...` in each environment (`.venv`: pytorch; `.venvs/ov`: openvino "
        "openvino-f32 pytorch; `.venvs/ort`: ort pytorch), then this report. The model is tiny (9 MB), so per-token "
        "overhead dominates and pruning half the experts changes little; on this shared 2-core machine absolute "
        "tokens/s moved by up to 2x between runs; over three runs the pruned/full ratio of each row (alternating "
        "runs) stayed within ±10% of 1.0, except ONNX Runtime's, 1.4x to 2.0x: optimum-onnx's exported qwen3_moe "
        "block runs a branch for every expert, routed to or not (`qwen3_moe_forward_patched` in "
        "`optimum/exporters/onnx/model_patcher.py`), so its cost follows the expert count.\n",
        "| backend | versions | full tok/s | REAP 50% tok/s | speed-up | export + load s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        lines.append(
            f"| {BACKENDS[r['backend']][0]} | {versions} | {r['full']:.1f} | {r['reap50']:.1f} | "
            f"{r['reap50'] / r['full']:.2f}x | {r['reap50_load_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["prune", "run", "report"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--backend", nargs="+", choices=list(BACKENDS), default=["pytorch"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every backend (the machine is shared)")
    parser.add_argument("--write", action="store_true", help="report: write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    if args.step == "prune":
        prune(args.folder)
    elif args.step == "run":
        torch.set_num_threads(args.threads)
        for backend in args.backend:
            run(args.folder, backend, args.repeats, args.threads)
    else:
        body = report(args.folder)
        if args.write:
            try:
                from _results import write_section
            except ImportError:  # run as a module
                from benchmarks._results import write_section
            write_section("optimum", body)
        print(body)


if __name__ == "__main__":
    main()
