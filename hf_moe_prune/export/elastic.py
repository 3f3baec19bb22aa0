"""Elastic checkpoints on disk: one stock checkpoint that loads at several sizes (`hf_moe_prune.save_elastic`).

A folder holds:

- the full model's weights, as stock transformers saves them, with every MoE layer's experts permuted into *nested
  order* (router rows, expert tensors, biases and score-correction biases alike, so the model computes the same
  function): the experts the smallest size keeps first, then those each larger size adds, then the rest, each group in
  ascending original order. Every size therefore keeps a prefix of the stored experts of each layer;
- `moe_elastic` in config.json: `format_version`, the method and allocation, `parameters` of the full model,
  `original_num_experts` and `expert_order` per block (the original expert index stored at each position), and
  `sizes` (per size: `ratio`, `experts_per_layer`, `experts`, `parameters`, `uniform`, the held-out `quality` and
  `nesting`, whether keeping the sizes nested changed this one and what the independent plan measured);
- `moe_elastic_plans.json`: every size's full `PrunePlan` (original indices, scores, quality), which a loaded size
  carries, so that its `save_pretrained` writes an ordinary pruned checkpoint;
- README.md: the sizes with parameters and quality, and how to load each.

Without `import hf_moe_prune` (or without `pruning_config`) the folder is a plain checkpoint of the full model.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard, ModelCardData

from hf_moe_prune.export.hub import _OWNED, _hub_errors
from hf_moe_prune.plan import BlockPlan, PrunePlan

ELASTIC_KEY = "moe_elastic"
PLANS_FILE = "moe_elastic_plans.json"
ELASTIC_FORMAT = 1
_SAME_RATIO = 1e-6


def storage_order(plans: list[PrunePlan]) -> dict[str, list[int]]:
    """Per block, the original expert index to store at each position, for `plans` ordered by ascending ratio
    (largest size first, each keeping a subset of the experts of the one before): the smallest size's experts first,
    then what each larger size adds, then the rest, each group ascending."""
    order = {}
    for block in plans[0].blocks:
        seen: set[int] = set()
        positions: list[int] = []
        for plan in reversed(plans):
            added = sorted(set(plan.block(block.name).kept) - seen)
            positions += added
            seen.update(added)
        order[block.name] = positions + [e for e in range(block.num_experts) if e not in seen]
    return order


def metadata(plans: list[PrunePlan], order: dict[str, list[int]], nesting: list[dict], parameters: int) -> dict:
    """The `moe_elastic` block of config.json (see the module docstring)."""
    first = plans[0]
    sizes = []
    for plan, nested in zip(plans, nesting, strict=True):
        sizes.append(
            {
                "ratio": plan.ratio,
                "experts_per_layer": plan.experts_per_layer,
                "experts": sum(b.num_kept for b in plan.blocks),
                "parameters": plan.parameters.get("after"),
                "uniform": plan.is_uniform,
                "quality": {k: v for k, v in (plan.quality or {}).items() if k != "what"} or None,
                "nesting": nested,
            }
        )
    return {
        "format_version": ELASTIC_FORMAT,
        "library": "hf_moe_prune",
        "version": first.versions.get("hf_moe_prune"),
        "method": first.method,
        "allocation": first.config.get("allocation"),
        "base_model": first.base_model,
        "parameters": parameters,
        "original_num_experts": {b.name: b.num_experts for b in first.blocks},
        "expert_order": order,
        "sizes": sizes,
        "plans_file": PLANS_FILE,
    }


def write_elastic(folder: str | os.PathLike, meta: dict, plans: list[PrunePlan], repo_id: str | None = None) -> None:
    """Add the `moe_elastic` block to the config.json in `folder` and write the plans file and the model card."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config[ELASTIC_KEY] = meta
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    data = {"format_version": ELASTIC_FORMAT, "plans": [plan.to_dict() for plan in plans]}
    (folder / PLANS_FILE).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    render_card(meta, repo_id).save(str(folder / "README.md"))


def elastic_block(config_dict: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `moe_elastic` block of a config.json dict, or None when it is no elastic checkpoint (a checkpoint pruned
    since, which still carries the block of the one it came from, is not: it has `moe_pruning`)."""
    if not isinstance(config_dict, dict) or not isinstance(config_dict.get(ELASTIC_KEY), dict):
        return None
    if config_dict.get("moe_pruning") is not None or config_dict.get("quantization_config") is not None:
        return None
    block = config_dict[ELASTIC_KEY]
    version = block.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= ELASTIC_FORMAT:
        raise ValueError(
            f"config.json moe_elastic has format_version {version!r}; this hf_moe_prune reads 1 to {ELASTIC_FORMAT} "
            "(upgrade hf_moe_prune for newer ones)."
        )
    return block


def describe_sizes(block: dict[str, Any]) -> str:
    """The sizes of an elastic checkpoint in a few words each, for messages."""
    return ", ".join(
        f"ratio={s.get('ratio')} ({s.get('experts')} experts, {s.get('parameters')} parameters)"
        for s in block.get("sizes") or []
    )


def choose_size(block: dict[str, Any], ratio: float | None, where: str) -> int:
    """The index of the size of `ratio` in `block["sizes"]`.

    Raises:
        `ValueError`: no size has that ratio; the message lists the sizes.
    """
    for i, size in enumerate(block.get("sizes") or []):
        if isinstance(ratio, (int, float)) and abs(float(size.get("ratio", -1)) - ratio) < _SAME_RATIO:
            return i
    raise ValueError(
        f"{where} is an elastic checkpoint; it loads at {describe_sizes(block)}, not at ratio={ratio!r}. Ask for "
        "one of these with pruning_config=MoEPruneConfig(ratio=...), or load without pruning_config for the full "
        "model (then prune it as you like with hf_moe_prune.prune)."
    )


def read_plan(folder: str | os.PathLike, index: int) -> PrunePlan:
    """The plan of size `index` from the plans file in `folder` (checked as any plan file is)."""
    path = Path(folder) / PLANS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        plan = data["plans"][index]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        raise ValueError(f"{path}: no plan for size {index} of this elastic checkpoint ({error!r}).") from None
    try:
        return PrunePlan.from_dict(plan)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{path}: {error}") from None


def storage_plan(plan: PrunePlan, block: dict[str, Any]) -> PrunePlan:
    """`plan` with each block's kept experts given as stored positions, in ascending original order: reading those
    rows in that order gives the experts in the order a direct prune keeps them.

    Raises:
        `ValueError`: the stored order is not a permutation, or a size's experts are not a prefix of it.
    """
    orders = block.get("expert_order") or {}
    blocks = []
    for b in plan.blocks:
        order = orders.get(b.name)
        if not isinstance(order, list) or sorted(order) != list(range(b.num_experts)):
            raise ValueError(f"config.json moe_elastic.expert_order[{b.name!r}] is not a permutation of the experts.")
        position = {expert: i for i, expert in enumerate(order)}
        rows = [position[e] for e in sorted(b.kept)]
        if rows and max(rows) >= b.num_kept:
            raise ValueError(f"config.json moe_elastic: the experts {b.name} keeps are not a prefix of its order.")
        blocks.append(BlockPlan(b.name, b.layer_idx, b.num_experts, rows))
    return PrunePlan(plan.method, plan.model_type, blocks, ratio=plan.ratio)


def _number(n: int | None) -> str:
    if not n:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _cell(quality: dict | None, key: str, spec: str) -> str:
    value = (quality or {}).get(key)
    return "n/a" if value is None else format(value, spec)


def render_card(meta: dict[str, Any], repo_id: str | None = None) -> ModelCard:
    """The model card: the sizes with their parameters and held-out quality, and how to load each."""
    from hf_moe_prune.export.card import hub_base_model

    base = hub_base_model(meta.get("base_model"))
    repo = repo_id or "path/to/this/folder"
    data = ModelCardData(
        base_model=base,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["moe", "pruning", "expert-pruning", "elastic", "hf_moe_prune", str(meta.get("method"))],
    )
    experts = sum(meta["original_num_experts"].values())
    rows = [f"| full | {experts} | {_number(meta.get('parameters'))} | 0 | 100% | — | — |"]
    for size in meta["sizes"]:
        q = size.get("quality") or {}
        changed = "yes" if (size.get("nesting") or {}).get("changed") else "no"
        rows.append(
            f"| {size['ratio']:g} | {size['experts']} | {_number(size.get('parameters'))} | {_cell(q, 'kl', '.4g')} "
            f"| {_cell(q, 'top1_agreement', '.1%')} | {_cell(q, 'ppl_after', '.3f')} | {changed} |"
        )
    first = next((s.get("quality") for s in meta["sizes"] if (s.get("quality") or {}).get("ppl_before")), {})
    load = f'AutoModelForCausalLM.from_pretrained("{repo}", pruning_config=MoEPruneConfig(ratio='
    loads = "\n".join(f"size_{i} = {load}{s['ratio']:g}))" for i, s in enumerate(meta["sizes"]))
    model = f"[{base}](https://huggingface.co/{base})" if base else "A MoE language model"
    text = f"""
# Elastic MoE checkpoint ({meta.get("method")} expert pruning, {len(meta["sizes"])} sizes)

{model}, stored by [hf_moe_prune](https://pypi.org/project/hf-moe-prune/) so that it loads at several sizes.
The weights are the full model (a stock checkpoint: plain transformers loads it and computes the same function), with
each MoE layer's experts stored in nested order, so that every smaller size keeps a prefix of them. Loading a size
reads only its experts' bytes from the safetensors files: its peak memory is that of a checkpoint of that size.

## Sizes

| ratio | routed experts | parameters | KL (nats/token) | top-1 agreement | perplexity | nesting changed it |
|---|---:|---:|---:|---:|---:|---|
{chr(10).join(rows)}

Measured against the full model (perplexity {_cell(first, "ppl_before", ".3f")}) on calibration rows held out from
scoring, with the dropped experts masked in the router (the outputs of that size). KL is over the full model's
top-k tokens plus one bucket for the rest (a lower bound). A size marked "nesting changed it" keeps other experts
than an independent prune at that ratio would, so that it is a subset of the larger sizes;
`moe_elastic.sizes[].nesting` in config.json records what the independent plan measured.

## Usage

```python
from transformers import AutoModelForCausalLM

full = AutoModelForCausalLM.from_pretrained("{repo}")  # plain transformers: the full model

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig

{loads}
```

A loaded size carries its plan: `save_pretrained` writes it as an ordinary pruned checkpoint. Method
`{meta.get("method")}`, allocation `{meta.get("allocation")}`. Every size's plan (kept experts by their original
indices, scores) is in `{PLANS_FILE}`; `moe_elastic.expert_order` in config.json gives the original index of
each stored expert.
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | bool | None = None,
):
    """Upload an elastic folder as one commit (its card rendered for `repo_id`); stale weight shards are deleted."""
    folder = Path(folder)
    meta = elastic_block(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    if meta is None:
        raise ValueError(f"{folder} is not an elastic checkpoint (no moe_elastic block in its config.json).")
    api = HfApi(token=token)
    with _hub_errors(repo_id, api.endpoint, "creating the repository"):
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    card = str(render_card(meta, repo_id)).encode()
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    operations: list = [CommitOperationAdd(f, str(folder / f)) for f in files if f != "README.md"]
    operations.append(CommitOperationAdd("README.md", io.BytesIO(card)))
    message = commit_message or f"Upload elastic MoE checkpoint ({len(meta['sizes'])} sizes)"
    with _hub_errors(repo_id, api.endpoint, "committing"):
        if revision and revision != "main" and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        stale = [
            f
            for f in api.list_repo_files(repo_id, revision=revision)
            if f not in files and any(fnmatch.fnmatch(f, p) for p in _OWNED)
        ]
        operations += [CommitOperationDelete(f) for f in stale]
        return api.create_commit(repo_id, operations, commit_message=message, revision=revision)
