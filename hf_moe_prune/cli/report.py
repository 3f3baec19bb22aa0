"""Human-readable printing of the reports of `hf-moe-prune` subcommands (`--json` prints them as they are)."""

from __future__ import annotations

import argparse
from typing import Any


def _quality_table(before: dict[str, Any] | None, after: dict[str, Any]) -> None:
    head = f"  {'domain':<10}" + (f" {'ppl before':>11}" if before else "") + f" {'ppl':>10}"
    compare = after["overall"]["kl"] is not None
    print(head + (f" {'KL':>8} {'top-1 agree':>12}" if compare else ""))
    rows = [(name, after["domains"][name]) for name in after["domains"]] + [("all", after["overall"])]
    for name, result in rows:
        line = f"  {name:<10}"
        if before:
            reference = before["overall"] if name == "all" else before["domains"][name]
            line += f" {reference['perplexity']:>11.2f}"
        line += f" {result['perplexity']:>10.2f}"
        if compare:
            line += f" {result['kl']:>8.4f} {result['top1_agreement']:>12.3f}"
        print(line)


def _print_elastic(report: dict[str, Any]) -> None:
    print(
        f"\nElastic checkpoint of {report['model']} ({report['method']}) -> {report['output']} ({report['seconds']} s)"
    )
    for size in report["elastic_sizes"]:
        quality = size.get("quality") or {}
        kl = f", held-out KL {quality['kl']:.4f}, ppl {quality['ppl_after']:.3f}" if "kl" in quality else ""
        print(
            f"  ratio {size['ratio']}: {size['parameters']:,} parameters, experts per layer "
            f"{list(size['experts_per_layer'].values())}{kl}"
        )
    print(f"  load a size: from_pretrained({report['output']!r}, pruning_config=MoEPruneConfig(ratio=R))")
    if "hub" in report:
        print(f"  pushed: {report['hub']}")


def _print_prune(report: dict[str, Any]) -> None:
    if "elastic_sizes" in report:
        return _print_elastic(report)
    params, disk = report["parameters"], report["safetensors_bytes"]
    print(f"\nPruned {report['model']} with {report['method']} -> {report['output']}")
    print(f"  experts kept per layer: {report['kept_experts_per_layer']}")
    print(f"  pruning time: {report['prune_seconds']} s")
    if "kept_neurons_per_layer" in report:
        print(f"  share of expert neurons kept per layer: {report['kept_neurons_per_layer']}")
    print(_parameters(params))
    if disk["before"]:
        print(f"  safetensors on disk: {disk['before'] / 1e6:.2f} MB -> {disk['after'] / 1e6:.2f} MB")
    if "hub" in report:
        print(f"  pushed: {report['hub']}")
    if "healing" in report:
        heal = report["healing"]
        line = f"  healed: {heal['steps']} steps ({heal['stopped']}) in {heal['seconds']} s"
        if heal.get("held_out_kl_before") is not None:
            line += f"; held-out KL {heal['held_out_kl_before']:.4g} -> {heal['held_out_kl_after']:.4g}"
        print(line)
    if "held_out_quality" in report:
        _held_out(report["held_out_quality"])
    if "quality" in report:
        print("  evaluation texts:")
        _quality_table(report["quality"]["before"], report["quality"]["after"])


def _held_out(quality: dict[str, Any]) -> None:
    from hf_moe_prune.pipeline.measure import quality_lines

    print("  measured on held-out calibration rows (never used for scoring; same distribution as calibration):")
    for line in quality_lines(quality):
        print(f"    {line}")


def _parameters(params: dict[str, int]) -> str:
    line = f"  parameters: {params['before']:,} -> {params['after']:,}"
    return line + (f" ({params['after'] / params['before']:.1%} kept)" if params["before"] else "")


def _print_inspect(report: dict[str, Any]) -> None:
    print(f"\nExpert usage of {report['model']}" + (f" (plan: {report['plan']})" if report["plan"] else ""))
    for name, domain in report["summary"].items():
        print(f"  {name} ({domain['tokens']:,} tokens)")
        print(f"    {'layer':>5} {'experts':>8} {'unused':>7} {'max share':>10} {'effective':>10}")
        for idx, layer in domain["layers"].items():
            print(
                f"    {idx:>5} {layer['experts']:>8} {layer['unused']:>7} {layer['max_share']:>10.1%}"
                f" {layer['effective_experts']:>10.2f}"
            )
    print("  (effective = exp(entropy of the routed-token share): the number of equally used experts it matches)")
    print("  wrote: " + ", ".join(report["files"]))


def _print_eval(report: dict[str, Any]) -> None:
    print(f"\nEvaluation of {report['model']}" + (f" vs {report['reference']}" if report["reference"] else ""))
    if "quality" in report:
        _quality_table(None, report["quality"])
    for task, metrics in report.get("tasks", {}).items():
        values = []
        for key, value in metrics.items():  # lm-eval keys are "metric,filter", with "metric_stderr,filter"
            name, _, filtered = key.partition(",")
            if filtered and not name.endswith("_stderr"):
                stderr = metrics.get(f"{name}_stderr,{filtered}")
                values.append(f"{name} {value:.4g}" + (f" ± {stderr:.2g}" if stderr is not None else ""))
        print(f"  {task}: " + ", ".join(values))


def _print_plan(plan: dict[str, Any]) -> None:
    blocks = plan["blocks"]
    kept = sum(len(b["kept"]) for b in blocks)
    total = sum(b["num_experts"] for b in blocks)
    print(f"Pruning plan: method {plan['method']}, {plan['model_type']}, kept {kept} of {total} routed experts")
    if plan.get("base_model"):
        print(f"  base model: {plan['base_model']}")
    if plan.get("ratio") is not None:
        print(f"  ratio: {plan['ratio']}")
    if plan.get("calibration"):
        print("  calibration: " + ", ".join(f"{k} {v}" for k, v in plan["calibration"].items()))
    if plan.get("parameters"):
        print(_parameters(plan["parameters"]))
    if plan.get("quality"):
        _held_out(plan["quality"])
    print(f"  {'layer':>5} {'kept':>9}  expert ids")
    for b in blocks:
        kept = f"{len(b['kept'])}/{b['num_experts']}"
        print(f"  {b['layer_idx']:>5} {kept:>9}  {' '.join(map(str, b['kept']))}")


def _print_apply(report: dict[str, Any]) -> None:
    params = report["parameters"]
    print(f"\nApplied {report['plan']} ({report['method']}) to {report['base_model']} -> {report['output']}")
    print(f"  experts kept per layer: {report['kept_experts_per_layer']}")
    print(_parameters(params))
    if "hub" in report:
        print(f"  pushed: {report['hub']}")


def _print_gguf(report: dict[str, Any]) -> None:
    print(
        f"Wrote {report['output']} ({report['bytes'] / 1e6:.2f} MB): {report['architecture']}, {report['tensors']} "
        f"tensors, {report['expert_count']} experts ({report['expert_used_count']} per token)"
    )


def _print_calibrate(report: dict[str, Any]) -> None:
    print(
        f"Calibrated {report['model']}: {report['blocks']} MoE layers, {report['rows']} rows x {report['seq_len']} "
        f"tokens ({report['held_out_rows']} held out), {report['calibrate_seconds']} s"
    )
    print(f"Statistics: {', '.join(report['statistics'])}")
    print(f"Saved to {report['output']} ({(report['bytes'] or 0) / 2**20:.1f} MiB)")
    print(f"Decide from them: hf-moe-prune prune {report['model']} --statistics {report['output']} --ratio R")


def print_report(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Print the report of the subcommand `args` names, for people.

    Args:
        args (`argparse.Namespace`): The parsed arguments (`command`, and `action` for `plan`).
        report (`dict`): What the subcommand's `run_*` function returned.
    """
    if args.command == "plan":
        (_print_plan if args.action == "show" else _print_apply)(report)
    else:
        printers = {"prune": _print_prune, "calibrate": _print_calibrate, "inspect": _print_inspect}
        printers["export-gguf"] = _print_gguf
        printers.get(args.command, _print_eval)(report)
