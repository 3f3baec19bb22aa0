"""Prune, measure quality, and upload the compact model to the Hugging Face Hub with `hf_moe_prune.push_to_hub`.

python examples/push_to_hub.py                                    # bundled fixture, offline: prunes and saves locally
python examples/push_to_hub.py --repo-id you/qwen3-moe-fixture-reap50        # also uploads (network, HF_TOKEN)
python examples/push_to_hub.py --model Qwen/Qwen3-30B-A3B --calibration data.jsonl --repo-id you/Qwen3-30B-A3B-reap50

The same from the command line: `hf-moe-prune prune MODEL --calibration data.jsonl --push-to-hub you/name`.
"""

import argparse
import sys
import tempfile

from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig
from hf_moe_prune.pipeline.evaluation import evaluate, format_markdown
from hf_moe_prune.testing import DOMAINS, fixture_path, fixture_texts, mixed_texts

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=fixture_path("qwen3_moe"))
parser.add_argument("--calibration", default=None, help="a .txt/.jsonl file or folder (default: bundled texts)")
parser.add_argument("--method", default="reap")
parser.add_argument("--ratio", type=float, default=0.5)
parser.add_argument("--repo-id", default=None, help="namespace/name to upload to; without it nothing is uploaded")
parser.add_argument("--private", action="store_true")
args = parser.parse_args()

push_to_hub = getattr(hf_moe_prune, "push_to_hub", None)
if args.repo_id and push_to_hub is None:
    sys.exit("This version of hf_moe_prune has no push_to_hub; upload the saved folder with `hf upload` instead.")

bundled = args.model == fixture_path("qwen3_moe")
config = MoEPruneConfig(
    method=args.method, ratio=args.ratio, calibration=args.calibration or mixed_texts(), num_samples=64, seq_len=256
)
tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForCausalLM.from_pretrained(args.model, pruning_config=config)

if bundled:  # measured quality goes into the model card
    texts = {d: fixture_texts(d, "evaluation") for d in DOMAINS}
    base = AutoModelForCausalLM.from_pretrained(args.model)
    before, after = evaluate(base, tokenizer, texts), evaluate(model, tokenizer, texts, reference=base)
    print(format_markdown({"base": before, args.method: after}))
    from hf_moe_prune.export import card

    if hasattr(card, "attach_quality"):
        card.attach_quality(model, before, after)

output = tempfile.mkdtemp(prefix="pruned-")
model.save_pretrained(output, overwrite=True)
tokenizer.save_pretrained(output)
print(f"saved {output} (model card: {output}/README.md)")
if not args.repo_id:
    print("No --repo-id given, so nothing was uploaded. Pass --repo-id namespace/name (and log in, or set HF_TOKEN).")
else:
    info = push_to_hub(model, args.repo_id, tokenizer=tokenizer, private=args.private or None)
    print("uploaded:", getattr(info, "commit_url", info))
