"""Quality benchmark on the trained fixtures: does the pruning criterion matter, and does calibration data?

    python benchmarks/quality.py                     # both fixtures, all methods, ratios 0.25 and 0.5
    python benchmarks/quality.py --write             # ... and write the tables into benchmarks/RESULTS.md
    python benchmarks/quality.py --methods reap+global+fisher auto auto:60   # method+allocation+compensation;
                                                     # auto:60 = method="auto" with time_budget=60

For each fixture, method and ratio the model is pruned after calibrating on the mixed domains and, separately, on each
single domain, then evaluated on the held-out text of every domain: perplexity, KL divergence of the next-token
distribution against the unpruned model, top-1 agreement with it, and the wall time of the pruning.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import METHODS, MoEPruneConfig
from hf_moe_prune.pipeline.evaluation import evaluate
from hf_moe_prune.testing import DOMAINS, FIXTURES, fixture_path, fixture_texts, mixed_texts

try:
    from _results import write_section
except ImportError:  # run as a module
    from benchmarks._results import write_section


def calibration_sets(names: list[str]) -> dict[str, list[str]]:
    return {n: mixed_texts() if n == "mixed" else fixture_texts(n, "calibration") for n in names}


def run_fixture(name: str, args) -> str:
    path = fixture_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    eval_texts = {d: fixture_texts(d, "evaluation") for d in DOMAINS}
    kwargs = {"seq_len": args.seq_len, "max_rows": args.eval_rows, "progress": False}
    full = evaluate(reference, tokenizer, eval_texts, **kwargs)
    header = (
        "| method | ratio | calibration | "
        + " | ".join(f"ppl {d}" for d in DOMAINS)
        + " | ppl all | KL | top-1 agree | prune s |"
    )
    lines = [header, "|" + "---|" * (len(DOMAINS) + 7)]
    cells = " | ".join(f"{full.domains[d].perplexity:.2f}" for d in DOMAINS)
    lines.append(f"| full model | 0 | — | {cells} | {full.overall.perplexity:.2f} | 0 | 1.000 | — |")
    for ratio in args.ratios:
        for spec in args.methods:
            # "method", or "method+allocation" / "method+allocation+compensation" (e.g. reap+global+fisher);
            # "auto:60" gives a search a time budget of 60 s
            name, _, budget = spec.partition(":")
            method, allocation, compensation = ([*name.split("+"), None, None])[:3]
            calibs = ["none"] if not METHODS.get(method).needs_calibration else args.calibrations
            if allocation or compensation or METHODS.get(method).fit is not None:
                calibs = [c for c in calibs if c == "mixed"] or calibs[:1]
            for calib in calibs:
                model = copy.deepcopy(reference)
                config = MoEPruneConfig(
                    method=method,
                    ratio=ratio,
                    allocation=allocation or None,
                    compensation=compensation or None,
                    calibration=None if calib == "none" else calibration_sets([calib])[calib],
                    num_samples=args.num_samples,
                    seq_len=args.seq_len,
                    seed=args.seed,
                    time_budget=float(budget) if budget else None,
                )
                start = time.perf_counter()
                plan = hf_moe_prune.prune(model, config, tokenizer=tokenizer, progress=False)
                seconds = time.perf_counter() - start
                res = evaluate(model, tokenizer, eval_texts, reference=reference, **kwargs)
                cells = " | ".join(f"{res.domains[d].perplexity:.2f}" for d in DOMAINS)
                label = spec
                if plan.search:  # auto: which candidate won, and the search's time in calibration passes
                    chosen = plan.search["candidates"][plan.search["chosen"]]
                    options = "".join(f",{k}={v}" for k, v in chosen["method_kwargs"].items())
                    judged = sum("kl" in row for row in plan.search["candidates"])
                    cost = plan.search["seconds"] / max(plan.search["calibration_seconds"], 1e-9)
                    comp = f"+{chosen['compensation']}" if chosen.get("compensation", "none") != "none" else ""
                    label = (
                        f"{spec} → {chosen['method']}{options}+{chosen['allocation']}{comp} ({judged} judged, "
                        f"search {cost:.1f}× calibration)"
                    )
                lines.append(
                    f"| {label} | {ratio} | {calib} | {cells} | {res.overall.perplexity:.2f} | "
                    f"{res.overall.kl:.4f} | {res.overall.top1_agreement:.3f} | {seconds:.1f} |"
                )
                print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", nargs="+", default=list(FIXTURES))
    parser.add_argument("--methods", nargs="+", default=METHODS.names())
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--calibrations", nargs="+", default=["mixed", *DOMAINS])
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-rows", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="write the tables into benchmarks/RESULTS.md")
    parser.add_argument("--section", default="quality", help="RESULTS.md section to (re)write (default: quality)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    sections = []
    for name in args.fixtures:
        print(f"## {name}", flush=True)
        sections.append(f"#### Fixture `{name}`\n\n" + run_fixture(name, args))
    body = (
        f"Calibration: {args.num_samples} rows × {args.seq_len} tokens; evaluation: held-out text, up to "
        f"{args.eval_rows} rows × {args.seq_len} tokens per domain. KL and top-1 agreement against the unpruned "
        "model, token-weighted over domains.\n\n" + "\n\n".join(sections)
    )
    if args.write:
        write_section(args.section, body)
    print(body)


if __name__ == "__main__":
    main()
