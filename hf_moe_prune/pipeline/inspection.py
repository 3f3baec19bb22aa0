"""Expert-usage statistics of a MoE model per layer and per data domain, saved as JSON and drawn as PNG plots.

    usage = expert_usage(model, tokenizer, {"code": code_texts, "prose": prose_texts})
    save_usage(usage, "out/expert_usage.json")
    plot_usage(usage, "out", plan=plan)   # needs matplotlib: pip install 'hf-moe-prune[plots]'

The statistics are the ones pruning methods score from (`hf_moe_prune.calibration.collect_stats`), so the plots show
exactly what `frequency`, `soft_count`, `ean` and `reap` see.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

STATISTICS = frozenset({"count", "gate_sum", "norm_sum", "gate_norm_sum"})
PLOTS_EXTRA = "pip install 'hf-moe-prune[plots]'"


def usage_methods() -> list[str]:
    """The registered methods that score experts from the routing sums `expert_usage` collects alone (no gradients,
    no neuron statistics, no randomness)."""
    from hf_moe_prune.methods import METHODS

    return [m.name for m in METHODS.values() if m.fit is None and m.requires and m.requires <= STATISTICS]


def _layer_report(block, stats, methods) -> dict[str, Any]:
    from hf_moe_prune.methods import METHODS

    count = stats["count"]
    total = float(count.sum())
    return {
        "name": block.name,
        "layer_idx": block.layer_idx,
        "num_experts": block.num_experts,
        "top_k": block.top_k,
        **{name: stats[name].tolist() for name in sorted(STATISTICS)},
        "share": (count / total).tolist() if total else [0.0] * block.num_experts,
        "scores": {m: METHODS.get(m).score(stats).double().tolist() for m in methods},
    }


def expert_usage(
    model,
    tokenizer,
    sources: Mapping[str, Any],
    num_samples: int = 64,
    seq_len: int = 256,
    batch_size: int = 8,
    seed: int = 0,
    methods: tuple[str, ...] | None = None,
    merged: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Route each domain's text through `model` and report, per MoE layer and expert, how it was used.

    Args:
        model (`PreTrainedModel`): A MoE model of a supported family (left unchanged).
        tokenizer: Its tokenizer.
        sources (`Mapping[str, Any]`): `{domain: data}`, each data anything `MoEPruneConfig.calibration` accepts.
        num_samples (`int`, *optional*, defaults to 64): Packed rows per domain.
        seq_len (`int`, *optional*, defaults to 256): Tokens per row.
        batch_size (`int`, *optional*, defaults to 8): Rows per forward.
        seed (`int`, *optional*, defaults to 0): Seed of the row sampling.
        methods (`tuple[str]`, *optional*): Scoring methods whose per-expert scores are reported; by default every
            registered method that scores from these routing sums alone (`usage_methods`).
        merged (`str`, *optional*): Also report the sum of all domains under this name.
        progress (`bool`, *optional*, defaults to `True`): Show progress bars.

    Returns:
        `dict`: `{"domains": {domain: {"rows", "tokens", "layers": [...]}}, "score_domain": ...}`; every layer holds
        the raw sums (`count`, `gate_sum`, `norm_sum`, `gate_norm_sum`), `share` (fraction of the layer's routed
        (token, expert) pairs that went to each expert; 1/E when perfectly balanced) and `scores` per method.
    """
    from hf_moe_prune.adapters import find_blocks
    from hf_moe_prune.calibration import calibration_rows, collect_stats

    methods = tuple(usage_methods() if methods is None else methods)
    blocks = find_blocks(model)
    if not blocks:
        raise ValueError("The model has no routed MoE layers to inspect.")
    per_domain, domains = {}, {}
    for name, source in sources.items():
        rows = calibration_rows(source, tokenizer, num_samples, seq_len, seed)
        stats = collect_stats(model, blocks, STATISTICS, rows, batch_size, progress=progress)
        per_domain[name] = (stats, int(rows.shape[0]), int(rows.numel()))
    if merged and len(per_domain) > 1:
        first, *rest = per_domain.values()
        total = {b.name: _copy(first[0][b.name]) for b in blocks}
        for stats, _, _ in rest:
            for b in blocks:
                total[b.name].merge_(stats[b.name])
        rows = sum(v[1] for v in per_domain.values())
        per_domain[merged] = (total, rows, sum(v[2] for v in per_domain.values()))
    for name, (stats, rows, tokens) in per_domain.items():
        layers = [_layer_report(b, stats[b.name], methods) for b in blocks]
        domains[name] = {"rows": rows, "tokens": tokens, "layers": layers}
    score_domain = next((d for d in ("mixed", merged) if d in domains), list(domains)[-1])
    return {"domains": domains, "score_domain": score_domain, "seq_len": seq_len, "methods": list(methods)}


def _copy(stats):
    from hf_moe_prune.calibration import LayerStats

    return LayerStats(stats.num_experts).merge_(stats)


def save_usage(usage: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write `usage` (from `expert_usage`, plus any metadata) as indented JSON and return the path.

    Args:
        usage (`Mapping`): JSON-serializable statistics.
        path (`str` or `os.PathLike`): The file to write (its folder is created).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(usage, indent=1) + "\n", encoding="utf-8")
    return path


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"Plots need matplotlib, which is not installed: {PLOTS_EXTRA}") from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _removed(plan, layer: dict[str, Any]) -> list[int]:
    """Experts of `layer` that `plan` removes, if the plan was made for a model with this layer's expert count."""
    if plan is None:
        return []
    block = next((b for b in plan.blocks if b.name == layer["name"]), None)
    if block is None or block.num_experts != layer["num_experts"]:
        return []
    return sorted(set(range(block.num_experts)) - set(block.kept))


def plot_heatmap(usage: Mapping[str, Any], path: str | os.PathLike, plan=None) -> Path:
    """Heatmap of the routed-token share per layer x expert, one panel per domain; `plan`'s removed experts get ×.

    Args:
        usage (`Mapping`): The result of `expert_usage`.
        path (`str` or `os.PathLike`): The PNG file to write.
        plan (`PrunePlan`, *optional*): Made for this model (same expert counts): its removed experts are marked.
    """
    plt = _pyplot()
    domains = usage["domains"]
    vmax = max(max(max(layer["share"]) for layer in d["layers"]) for d in domains.values()) * 100
    fig, axes = plt.subplots(
        1, len(domains), figsize=(0.6 + 3.4 * len(domains), 2.8), squeeze=False, layout="constrained"
    )
    for ax, (name, domain) in zip(axes[0], domains.items()):
        layers = domain["layers"]
        grid = [[s * 100 for s in layer["share"]] for layer in layers]
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
        for row, layer in enumerate(layers):
            for expert in _removed(plan, layer):
                ax.text(expert, row, "×", ha="center", va="center", color="#ff5555", fontsize=9)
        ax.set_title(f"{name} ({domain['tokens']:,} tokens)", fontsize=9)
        ax.set_xlabel("expert", fontsize=8)
        ax.set_yticks(range(len(layers)), [str(layer["layer_idx"]) for layer in layers], fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    axes[0][0].set_ylabel("layer", fontsize=8)
    bar = fig.colorbar(image, ax=axes[0].tolist(), fraction=0.03, pad=0.01)
    bar.set_label("% of routed tokens", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    title = "Routed-token share per layer and expert" + (f" (× = removed by {plan.method})" if plan else "")
    fig.suptitle(title, fontsize=10)
    return _save(fig, plt, path)


def plot_kept(plan, path: str | os.PathLike) -> Path:
    """Per-layer kept and removed expert counts of `plan`, and which original experts each layer keeps.

    Args:
        plan (`PrunePlan`): The plan to draw.
        path (`str` or `os.PathLike`): The PNG file to write.
    """
    plt = _pyplot()
    blocks = plan.blocks
    fig, (bars, grid) = plt.subplots(1, 2, figsize=(9, 0.6 + 0.45 * max(4, len(blocks))), width_ratios=(1, 2.2))
    ys = range(len(blocks))
    kept = [b.num_kept for b in blocks]
    bars.barh(ys, kept, color="#2a9d8f")
    bars.barh(ys, [b.num_experts - b.num_kept for b in blocks], left=kept, color="#d9d9d9")
    for y, b in zip(ys, blocks):
        bars.text(b.num_kept / 2, y, str(b.num_kept), ha="center", va="center", color="white", fontsize=8)
    bars.set_yticks(list(ys), [str(b.layer_idx) for b in blocks], fontsize=7)
    bars.invert_yaxis()
    bars.set_xlabel("experts (teal = kept, grey = removed)", fontsize=8)
    bars.tick_params(axis="x", labelsize=7)
    bars.xaxis.get_major_locator().set_params(integer=True)
    bars.set_ylabel("layer", fontsize=8)
    width = max(b.num_experts for b in blocks)
    matrix = [
        [1.0 if e in b.kept else 0.0 if e < b.num_experts else float("nan") for e in range(width)] for b in blocks
    ]
    grid.imshow(matrix, aspect="auto", cmap="Greens", vmin=-0.2, vmax=1.2, interpolation="nearest")
    grid.set_yticks(list(ys), [str(b.layer_idx) for b in blocks], fontsize=7)
    grid.set_xlabel("original expert id (dark = kept)", fontsize=8)
    grid.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"Experts kept per layer ({plan.method}, {sum(kept)} of {sum(b.num_experts for b in blocks)})")
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_scores(usage: Mapping[str, Any], path: str | os.PathLike, plan=None) -> Path:
    """Per method, each expert's score relative to its layer's mean, per layer (hollow red = removed by `plan`).

    Args:
        usage (`Mapping`): The result of `expert_usage`; its `score_domain` is drawn.
        path (`str` or `os.PathLike`): The PNG file to write.
        plan (`PrunePlan`, *optional*): Made for this model (same expert counts): its removed experts are marked.
    """
    plt = _pyplot()
    domain = usage["score_domain"]
    layers = usage["domains"][domain]["layers"]
    methods = usage["methods"]
    fig, axes = plt.subplots(1, len(methods), figsize=(0.4 + 2.6 * len(methods), 2.8), squeeze=False, sharey=True)
    for ax, method in zip(axes[0], methods):
        for x, layer in enumerate(layers):
            scores = layer["scores"][method]
            mean = sum(scores) / len(scores) or 1.0
            removed = set(_removed(plan, layer))
            for expert, score in enumerate(scores):
                jitter = ((expert * 7919) % 11 - 5) * 0.03
                gone = expert in removed
                ax.scatter(
                    x + jitter,
                    score / mean,
                    s=12,
                    facecolors="none" if gone else "#264653",
                    edgecolors="#e63946" if gone else "#264653",
                    linewidths=0.8,
                )
        ax.axhline(1.0, color="grey", lw=0.6, ls="--")
        ax.set_title(method, fontsize=9)
        ax.set_xticks(range(len(layers)), [str(layer["layer_idx"]) for layer in layers], fontsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    axes[0][0].set_ylabel("score / layer mean", fontsize=8)
    fig.suptitle(f"Expert scores per method on {domain!r} data", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_usage(usage: Mapping[str, Any], output_dir: str | os.PathLike, plan=None) -> list[Path]:
    """Draw every plot for `usage` (and `plan`, if given) into `output_dir`; return the PNG paths.

    Args:
        usage (`Mapping`): The result of `expert_usage`.
        output_dir (`str` or `os.PathLike`): Folder for the PNG files (created if needed).
        plan (`PrunePlan`, *optional*): Marks removed experts and adds the kept-expert chart.

    Raises:
        `ImportError`: matplotlib is missing (install the `plots` extra).
    """
    _pyplot()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_heatmap(usage, out / "usage_heatmap.png", plan),
        plot_scores(usage, out / "score_distributions.png", plan),
    ]
    if plan is not None:
        paths.append(plot_kept(plan, out / "kept_experts.png"))
    return paths


def _save(fig, plt, path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
