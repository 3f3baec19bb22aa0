"""Which experts does each layer use, per data domain, and which would each method keep? JSON plus PNG plots.

python examples/inspect_experts.py                                     # bundled fixture: code, prose, mixed (offline)
python examples/inspect_experts.py --model allenai/OLMoE-1B-7B-0924 --data code=code.jsonl chat=chat.jsonl
python examples/inspect_experts.py --plan pruned/                      # mark the experts a saved plan removes

The same from the command line: `hf-moe-prune inspect [MODEL] [--calibration NAME=DATA ...] --output DIR`.
Plots need matplotlib (`pip install 'hf-moe-prune[plots]'`).
"""

import argparse
import tempfile
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_moe_prune import PrunePlan
from hf_moe_prune.pipeline.inspection import expert_usage, plot_usage, save_usage
from hf_moe_prune.testing import DOMAINS, fixture_path, fixture_texts, mixed_texts

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=fixture_path("qwen3_moe"))
parser.add_argument("--data", nargs="+", default=None, help="NAME=PATH per domain (default: bundled texts)")
parser.add_argument("--plan", default=None, help="moe_pruning_plan.json or a pruned model folder")
parser.add_argument("--num-samples", type=int, default=32)
parser.add_argument("--seq-len", type=int, default=256)
parser.add_argument("--output", default=None)
args = parser.parse_args()

if args.data:
    sources = dict(item.split("=", 1) for item in args.data)
else:
    sources = {d: fixture_texts(d, "calibration") for d in DOMAINS} | {"mixed": mixed_texts()}
tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForCausalLM.from_pretrained(args.model)
usage = expert_usage(model, tokenizer, sources, num_samples=args.num_samples, seq_len=args.seq_len)

output = Path(args.output or tempfile.mkdtemp(prefix="inspect-"))
print("wrote", save_usage(usage, output / "expert_usage.json"))
for name, domain in usage["domains"].items():
    top = [max(range(len(layer["share"])), key=layer["share"].__getitem__) for layer in domain["layers"]]
    print(f"{name}: most used expert per layer {top}")
try:
    plan = PrunePlan.load(args.plan) if args.plan else None
    print("plots:", *plot_usage(usage, output, plan=plan))
except ImportError as error:
    print(error)
