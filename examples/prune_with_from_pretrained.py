"""Prune while loading, save the compact model, reload it with plain transformers.

python examples/prune_with_from_pretrained.py                       # bundled trained fixture, offline
python examples/prune_with_from_pretrained.py --model Qwen/Qwen3-30B-A3B --calibration data.jsonl --output out
"""

import argparse
import tempfile

from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune  # noqa: F401  (registers pruning_config= with transformers)
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.testing import fixture_path, mixed_texts

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=fixture_path("qwen3_moe"))
parser.add_argument("--calibration", default=None, help="a .txt/.jsonl file or folder (default: bundled texts)")
parser.add_argument("--method", default="reap")
parser.add_argument("--ratio", type=float, default=0.5)
parser.add_argument("--output", default=None)
args = parser.parse_args()

config = MoEPruneConfig(
    method=args.method, ratio=args.ratio, calibration=args.calibration or mixed_texts(), num_samples=64, seq_len=256
)
model = AutoModelForCausalLM.from_pretrained(args.model, pruning_config=config)
tokenizer = AutoTokenizer.from_pretrained(args.model)
output = args.output or tempfile.mkdtemp(prefix="pruned-")
model.save_pretrained(output)
tokenizer.save_pretrained(output)

reloaded = AutoModelForCausalLM.from_pretrained(output)  # a uniform plan is a stock checkpoint
prompt = tokenizer("def main(", return_tensors="pt")
print(tokenizer.decode(reloaded.generate(**prompt, max_new_tokens=20, do_sample=False)[0]))
print("kept experts per layer:", {b.layer_idx: b.num_kept for b in model.moe_pruning_plan.blocks}, "->", output)
