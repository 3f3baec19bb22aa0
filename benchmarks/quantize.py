"""Pruned and quantized in one load: size and quality of each quantizer route, on every trained fixture.

    python benchmarks/quantize.py [--write] [--fixtures ...] [--ratio 0.5]

For each fixture: the unpruned model, the pruned one (reap, uniform, mixed-domain calibration), and the pruned one
loaded through each quantizer in the same `from_pretrained` (`pruning_config=..., quantization_config=...`):
bitsandbytes 8-bit (LLM.int8) and 4-bit (NF4), torchao int8 weight-only. Size is the saved checkpoint's safetensors
bytes (what a download costs) and the parameters' bytes in memory; quality is perplexity on the held-out evaluation
text of every domain and KL / top-1 agreement against the unpruned model (float32). bitsandbytes and torchao
quantize `nn.Linear` modules only, so transformers 5's fused expert tensors stay in floating point (the column
"experts quantized" says so); this is the measured cost of that limitation.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402


def _quantizers():
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import BitsAndBytesConfig, TorchAoConfig

    return {
        "none": None,
        "bitsandbytes 8-bit": BitsAndBytesConfig(load_in_8bit=True),
        "bitsandbytes 4-bit nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
        "torchao int8 weight-only": TorchAoConfig(Int8WeightOnlyConfig()),
    }


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def rows_for(fixture: str, args) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_moe_prune import MoEPruneConfig, find_blocks
    from hf_moe_prune.pipeline.evaluation import evaluate
    from hf_moe_prune.testing import DOMAINS, fixture_path, fixture_texts, mixed_texts

    path = fixture_path(fixture)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = {d: fixture_texts(d, "evaluation") for d in DOMAINS}
    kwargs = {"seq_len": args.seq_len, "max_rows": args.eval_rows, "progress": False}
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    full = evaluate(reference, tokenizer, texts, **kwargs).overall
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        reference.save_pretrained(Path(tmp) / "full")
        lines.append(
            f"| {fixture} | unpruned | — | {_bytes(Path(tmp) / 'full') / 1e6:.2f} | "
            f"{sum(p.numel() * p.element_size() for p in reference.parameters()) / 1e6:.2f} | {full.perplexity:.2f} | "
            "— | — | — |"
        )
        for name, quantization in _quantizers().items():
            request = MoEPruneConfig("reap", args.ratio, calibration=mixed_texts(), num_samples=args.num_samples)
            extra = {"quantization_config": quantization, "device_map": "cpu"} if quantization is not None else {}
            try:  # bitsandbytes' CPU kernels convert the weights at the first forward: evaluate inside
                model = AutoModelForCausalLM.from_pretrained(path, pruning_config=request, **extra)
                result = evaluate(model, tokenizer, texts, reference=reference, **kwargs).overall
            except Exception as error:  # a quantizer that cannot run this model: say so, keep the others
                reason = str(error).strip().splitlines()[-1][:80] if str(error).strip() else type(error).__name__
                lines.append(f"| {fixture} | reap {args.ratio} | {name} | failed: {reason} | | | | | |")
                print(lines[-1], flush=True)
                continue
            folder = Path(tmp) / name.replace(" ", "_")
            model.save_pretrained(folder)
            experts = [p for b in find_blocks(model) for p in b.experts.parameters() if p.dim() == 3]
            quantized = (
                "no" if all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in experts) else "yes"
            )
            memory = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
            lines.append(
                f"| {fixture} | reap {args.ratio} | {name} | {_bytes(folder) / 1e6:.2f} | {memory:.2f} | "
                f"{result.perplexity:.2f} | {result.kl:.4f} | {result.top1_agreement:.3f} | {quantized} |"
            )
            print(lines[-1], flush=True)
    return lines


def main() -> None:
    from hf_moe_prune.testing import FIXTURES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", nargs="+", default=list(FIXTURES))
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-rows", type=int, default=64)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    lines = [
        "Checkpoint MB: safetensors on disk; memory MB: the parameters as loaded (bitsandbytes/torchao int8 count one "
        "byte per quantized weight). Perplexity on the held-out evaluation text of every domain; KL and top-1 against "
        "the unpruned float32 model. CPU, float32 compute.",
        "",
        "| fixture | model | quantizer (same load) | checkpoint MB | memory MB | test ppl | KL | top-1 "
        "| experts quantized |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fixture in args.fixtures:
        lines += rows_for(fixture, args)
    body = "\n".join(lines)
    print(body)
    if args.write:
        write_section("quantize", body)


if __name__ == "__main__":
    main()
