"""Healing (`MoEPruneConfig(healing=...)`): what a short distillation after pruning buys, and what it costs.

    python benchmarks/healing.py [--write]            # every trained fixture, ratios 0.25 and 0.5
    python benchmarks/healing.py --fixtures olmoe --ratios 0.5 --steps 50 200
    python benchmarks/healing.py --fixtures deepseek_v3 --ratios 0.5 --options '{"train": ["all"]}' --section X

For each fixture and ratio the fixture is pruned with `method="auto"` and a time budget that judges every candidate
(the best plan the held-out rows find, its compensation included) on the mixed-domain calibration set, then healed
with the library's `heal` and its default options except early stopping, which is off so that one run gives the 50-,
200- and 500-step points (the table says where the default early stopping, patience 2 every 25 steps, would have
stopped). Test text is the held-out evaluation text of every domain, which neither calibration nor healing saw:
perplexity, KL and top-1 agreement against the unpruned model. "gap closed" is the share of the perplexity gap to the
unpruned model that healing removed. Time is the healing's wall time (without the table's evaluations) as a ratio to
one calibration pass over the same rows (a forward pass recording the teacher); peak memory is the process's peak
RSS, with and without healing, each in its own process.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

try:
    from _results import write_section
except ImportError:  # run as a module
    from benchmarks._results import write_section


def child(fixture: str, ratio: float, steps: list[int], heal_on: bool, args) -> dict:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_moe_prune
    from hf_moe_prune import MoEPruneConfig
    from hf_moe_prune.calibration.runner import peak_rss_kib
    from hf_moe_prune.calibration.teacher import record_teacher
    from hf_moe_prune.healing import heal
    from hf_moe_prune.pipeline import prepare
    from hf_moe_prune.pipeline.evaluation import evaluate
    from hf_moe_prune.pipeline.measure import measure
    from hf_moe_prune.testing import DOMAINS, fixture_path, fixture_texts, mixed_texts

    torch.manual_seed(0)
    path = fixture_path(fixture)
    tokenizer = AutoTokenizer.from_pretrained(path)
    reference = AutoModelForCausalLM.from_pretrained(path).eval()
    eval_texts = {d: fixture_texts(d, "evaluation") for d in DOMAINS}
    kwargs = {"seq_len": args.seq_len, "max_rows": args.eval_rows, "progress": False}
    config = MoEPruneConfig(
        method="auto",
        ratio=ratio,
        calibration=mixed_texts(),
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        time_budget=600,  # every candidate judged: the plan does not depend on the machine's speed
    )
    job = prepare(reference, config, tokenizer)
    start = time.perf_counter()
    teacher = record_teacher(reference, job.rows, batch_size=config.batch_size)  # what the calibration pass records
    pass_seconds = time.perf_counter() - start
    held_out = record_teacher(reference, job.eval_rows, batch_size=config.batch_size)
    full = evaluate(reference, tokenizer, eval_texts, **kwargs).overall
    model = copy.deepcopy(reference)
    plan = hf_moe_prune.prune(model, config, tokenizer=tokenizer, progress=False)
    chosen = plan.search["candidates"][plan.search["chosen"]]
    out = {
        "fixture": fixture,
        "ratio": ratio,
        "chosen": f"{chosen['method']}+{chosen['allocation']}+{chosen.get('compensation', 'none')}",
        "full_ppl": full.perplexity,
        "pass_seconds": pass_seconds,
        "rows": [len(job.rows), len(job.eval_rows)],  # what the text gave (fewer than asked warns in the child)
        "points": [],
    }

    def point(step: int, model) -> None:
        began = time.perf_counter()
        result = evaluate(model, tokenizer, eval_texts, reference=reference, **kwargs).overall
        held = measure(model, held_out, batch_size=config.batch_size)
        out["points"].append(
            {
                "step": step,
                "ppl": result.perplexity,
                "kl": result.kl,
                "top1": result.top1_agreement,
                "held_kl": held["kl"],
            }
        )
        out["callback_seconds"] = out.get("callback_seconds", 0.0) + time.perf_counter() - began

    point(0, model)
    out["callback_seconds"] = 0.0  # only the evaluations inside the healing run are taken off its time
    if heal_on:
        every = math.gcd(25, *steps)  # measured at every point of the table, and every 25 steps for the stop rule
        overrides = json.loads(args.options)
        healing = {"steps": max(steps), "patience": 0, "eval_every": every, **overrides}
        options = MoEPruneConfig("reap", ratio, healing=healing)
        options = options.healing
        marks = set(steps)
        record = heal(
            model,
            teacher,
            options,
            held_out=held_out,
            measure=measure,
            batch_size=config.batch_size,
            seed=0,
            progress=False,
            callback=lambda step, m: point(step, m) if step in marks else None,
        )
        out["heal_seconds"] = record["seconds"] - out["callback_seconds"]
        history = record["history"]
        best, since, stop = None, 0, None
        for entry in history:  # where the default early stopping (patience 2 every 25 steps) would have stopped
            if entry["step"] % 25:
                continue
            if best is None or entry["held_out_kl"] < best:
                best, since = entry["held_out_kl"], 0
            else:
                since += 1
                if since >= 2 and stop is None:
                    stop = entry["step"]
        out["default_stop"] = stop
    out["peak_rss_gb"] = peak_rss_kib() / 2**20
    return out


def main() -> None:
    from hf_moe_prune.testing import FIXTURES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", nargs="+", default=list(FIXTURES))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--steps", nargs="+", type=int, default=[50, 200, 500])
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-rows", type=int, default=64)
    parser.add_argument("--options", default="{}", help="healing options over the defaults, as JSON")
    parser.add_argument("--section", default="healing", help="RESULTS.md section to write")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("FIXTURE", "RATIO", "HEAL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fixture, ratio, heal_on = args.child
        print(json.dumps(child(fixture, float(ratio), args.steps, heal_on == "1", args)))
        return
    common = ["--steps", *map(str, args.steps), "--num-samples", str(args.num_samples), "--seq-len", str(args.seq_len)]
    common += ["--eval-rows", str(args.eval_rows), "--options", args.options]
    lines = [
        "| fixture | ratio | plan (`auto`) (training + held-out rows) | steps | test ppl | gap closed | test KL | "
        "top-1 | held-out KL | "
        "heal time / calibration pass | peak RSS GB (no healing → healing) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fixture in args.fixtures:
        for ratio in args.ratios:
            runs, start = {}, len(lines)
            for heal_on in ("0", "1"):
                command = [sys.executable, __file__, "--child", fixture, str(ratio), heal_on, *common]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                runs[heal_on] = json.loads(done.stdout.strip().splitlines()[-1])
            run = runs["1"]
            base = run["points"][0]["ppl"]
            memory = f"{runs['0']['peak_rss_gb']:.2f} → {run['peak_rss_gb']:.2f}"
            lines.append(
                f"| {fixture} | {ratio} | {run['chosen']} ({run['rows'][0]}+{run['rows'][1]} rows) | "
                f"0 (full model {run['full_ppl']:.2f}) | {base:.2f} | — | "
                f"{run['points'][0]['kl']:.4f} | {run['points'][0]['top1']:.3f} | {run['points'][0]['held_kl']:.4f} | "
                f"— | {memory} |"
            )
            per_step = run["heal_seconds"] / max(p["step"] for p in run["points"])
            for p in run["points"][1:]:
                gap = (base - p["ppl"]) / (base - run["full_ppl"]) if base > run["full_ppl"] else float("nan")
                stop = " (default early stop)" if run.get("default_stop") == p["step"] else ""
                lines.append(
                    f"| {fixture} | {ratio} | | {p['step']}{stop} | {p['ppl']:.2f} | {gap:.0%} | {p['kl']:.4f} | "
                    f"{p['top1']:.3f} | {p['held_kl']:.4f} | {per_step * p['step'] / run['pass_seconds']:.1f}× | |"
                )
            if run.get("default_stop") and run["default_stop"] not in {p["step"] for p in run["points"]}:
                lines.append(
                    f"| {fixture} | {ratio} | | default early stopping: step {run['default_stop']} | | | | | | | |"
                )
            print("\n".join(lines[start:]), flush=True)
    body = "\n".join(lines)
    print(body)
    if args.write:
        options = f"Healing options over the defaults: `{args.options}`.\n\n" if args.options != "{}" else ""
        write_section(args.section, options + body)


if __name__ == "__main__":
    main()
