"""Prune a model already in memory with `hf_moe_prune.prune`, compare quality with the unpruned model.

python examples/functional_api.py                    # bundled trained fixture, offline
python examples/functional_api.py --model PATH_OR_ID --calibration data.txt --eval eval.txt
"""

import argparse
import copy

from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.pipeline.evaluation import evaluate, format_markdown
from hf_moe_prune.testing import DOMAINS, fixture_path, fixture_texts, mixed_texts

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=fixture_path("qwen3_moe"))
parser.add_argument("--calibration", default=None)
parser.add_argument("--eval", default=None)
parser.add_argument("--method", default="reap")
parser.add_argument("--ratio", type=float, default=0.25)
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(args.model)
full = AutoModelForCausalLM.from_pretrained(args.model)
model = copy.deepcopy(full)
config = MoEPruneConfig(
    method=args.method, ratio=args.ratio, calibration=args.calibration or mixed_texts(), num_samples=64, seq_len=256
)
plan = hf_moe_prune.prune(model, config, tokenizer=tokenizer)
print({b.name: b.kept for b in plan.blocks})

texts = {"eval": args.eval} if args.eval else {d: fixture_texts(d, "evaluation") for d in DOMAINS}
results = {"full": evaluate(full, tokenizer, texts), args.method: evaluate(model, tokenizer, texts, reference=full)}
print(format_markdown(results))
