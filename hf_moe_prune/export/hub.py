"""Publishing a pruned model on the Hugging Face Hub: every file and the model card in one commit.

transformers' `PreTrainedModel.push_to_hub` would replace our README.md with its template card and upload the save
folder before the plan and card are written, so this module does not go through it: it builds the whole repository
in a temporary folder with the atomic `save_pruned`, then sends a single `HfApi.create_commit`. A commit is atomic on
the Hub, so a failed push leaves the repository as it was.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, constants

from hf_moe_prune.export.remote_code import check_remote_code, write_remote_code
from hf_moe_prune.export.saving import save_pruned
from hf_moe_prune.plan import PrunePlan

logger = logging.getLogger(__name__)

# Files a previous push may have left that this push replaces: stale shards would otherwise stay beside new weights.
_OWNED = (
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "modeling_pruned.py",
    "configuration_pruned.py",
)


class PushToHubError(RuntimeError):
    """Publishing failed on the network or on the Hub's side; no partial upload is left (the message says the fix)."""


def push_to_hub(
    model,
    repo_id: str,
    *,
    tokenizer=None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
    max_shard_size: int | str = "5GB",
    quality: Any = None,
    remote_code: bool = False,
    tags: list[str] | None = None,
) -> CommitInfo:
    """Upload a pruned model to the Hub in one commit: weights, config, plan JSON, tokenizer and model card.

    Args:
        model (`PreTrainedModel`): A model pruned by `hf_moe_prune` (it carries `moe_pruning_plan`).
        repo_id (`str`): `namespace/name` (or `name` in your own namespace); created if missing.
        tokenizer (*optional*): Saved into the repo as well.
        private (`bool`, *optional*): Visibility of a newly created repo (an existing repo keeps its visibility).
        revision (`str`, *optional*): Branch to commit to; created from `main` when it does not exist.
        commit_message (`str`, *optional*): Defaults to "Upload pruned MoE model (<method>, ...)".
        commit_description (`str`, *optional*): Commit (or pull request) description.
        token (`str` or `bool`, *optional*): Hub token; defaults to `HF_TOKEN` or the saved login.
        create_pr (`bool`, *optional*, defaults to `False`): Open a pull request instead of committing directly.
        max_shard_size (`int` or `str`, *optional*, defaults to `"5GB"`): Larger weights are split into shards.
        quality (*optional*): Measured quality for the card (see `hf_moe_prune.export.card.format_quality`);
            defaults to what `hf_moe_prune.export.card.attach_quality` recorded on the model.
        remote_code (`bool`, *optional*, defaults to `False`): For non-uniform plans, also publish
            `modeling_pruned.py`/`configuration_pruned.py` so that `from_pretrained(repo, trust_remote_code=True)`
            loads the model with plain transformers, without hf_moe_prune. Uniform plans need no code (ignored).
        tags (`list[str]`, *optional*): Extra tags for the card.

    Returns:
        `CommitInfo`: the commit (its `pr_url` when `create_pr=True`).

    Raises:
        `PushToHubError`: the Hub could not be reached or refused the request (chained from the client's error).
    """
    plan: PrunePlan | None = getattr(model, "moe_pruning_plan", None)
    if plan is None:
        raise ValueError(
            "This model carries no pruning plan: prune it first (hf_moe_prune.prune, or from_pretrained with "
            "pruning_config=), or push an unpruned model with transformers' own push_to_hub."
        )
    remote_code = remote_code and not plan.is_uniform  # a uniform plan is a stock checkpoint: no code needed
    if remote_code:
        if plan.expert_widths:
            raise ValueError(
                "remote_code=True cannot publish experts of different widths (neuron pruning): the loading code "
                "would need hf_moe_prune's width-grouped experts. Publish without remote_code; loading then needs "
                "`import hf_moe_prune`."
            )
        check_remote_code(model)
    api = HfApi(token=token)
    with _hub_errors(repo_id, api.endpoint, "creating the repository"):
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory(prefix="hf_moe_prune_push_") as tmp:
        folder = Path(tmp) / "repo"
        card = {"repo_id": repo_id, "remote_code": remote_code, "quality": quality, "tags": tags}
        code = (lambda path: write_remote_code(path, model, plan)) if remote_code else None
        save_pruned(model, folder, tokenizer=tokenizer, max_shard_size=max_shard_size, card=card, extra_files=code)
        if commit_message is None:
            counts = [b.num_kept for b in plan.blocks]
            kept = f"{counts[0]} experts per MoE layer" if plan.is_uniform else f"per-layer expert counts {counts}"
            commit_message = f"Upload pruned MoE model ({plan.method}, {kept})"
        return _commit_folder(api, folder, repo_id, revision, commit_message, commit_description, create_pr)


def _commit_folder(api: HfApi, folder: Path, repo_id, revision, message, description, create_pr) -> CommitInfo:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    operations: list = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files]
    with _hub_errors(repo_id, api.endpoint, "committing"):
        if revision and revision != constants.DEFAULT_REVISION and not revision.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        remote = api.list_repo_files(repo_id, revision=revision)
        stale = [f for f in remote if f not in files and any(fnmatch.fnmatch(f, p) for p in _OWNED)]
        operations += [CommitOperationDelete(path_in_repo=f) for f in stale]
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            commit_description=description,
            revision=revision,
            create_pr=create_pr,
        )
    logger.info("Pushed %d files to %s: %s", len(files), repo_id, info.pr_url or info.commit_url)
    return info


@contextlib.contextmanager
def _hub_errors(repo_id: str, endpoint: str, stage: str):
    """Turn the client's network and HTTP errors into one `PushToHubError` that names the repo, endpoint and fix."""
    try:
        yield
    except _network_errors() as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            fix = (
                "The Hub refused the token: check that HF_TOKEN (or `hf auth login`, or token=) holds a token with "
                f"write access to {repo_id.split('/')[0]!r}."
            )
        elif status is not None:
            fix = "The Hub answered with an error; retry later, and check the repo id, revision and HF_TOKEN."
        else:
            fix = "The Hub could not be reached: check the network (proxy, HF_ENDPOINT, HF_HUB_OFFLINE) and HF_TOKEN."
        lines = str(err).strip().splitlines()
        detail = getattr(err, "server_message", None) or (lines[0] if lines else type(err).__name__)
        raise PushToHubError(
            f"Pushing to {repo_id!r} at {endpoint} failed while {stage}{f' (HTTP {status})' if status else ''}: "
            f"{detail.strip()}\n"
            f"{fix} The upload is one commit, so the repo holds no partial upload; run the push again."
        ) from err


def _network_errors() -> tuple[type[BaseException], ...]:
    """Errors of the HTTP stack under huggingface_hub (httpx2 in 2.x, httpx or requests before), plus OSError,
    the base of `HfHubHTTPError`, `OfflineModeIsEnabled` and socket errors."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


# --- remote code for non-uniform plans ---------------------------------------------------------------------------
