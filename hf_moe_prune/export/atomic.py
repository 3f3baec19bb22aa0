"""Publishing a saved model folder in one step, without ever deleting anything that is not a model.

Next to a target folder `DIR` a save uses three hidden names:

- `.DIR.lock`: an exclusive `flock` held by the save in progress; the OS releases it when the process ends, even on
  SIGKILL, so a lock that can be taken means no live save is working on `DIR`.
- `.DIR.tmp-XXXXXXXX`: the folder being written (model, tokenizer, plan, card), published by renaming it to `DIR`.
- `.DIR.old-XXXXXXXX`: the previous `DIR` while it is being replaced, on filesystems without an atomic exchange.

Publishing: with `DIR` absent, one `os.replace`. With `DIR` present, Linux swaps the two folders in one
`renameat2(RENAME_EXCHANGE)`; elsewhere `DIR` → `.DIR.old-*`, then `.DIR.tmp-*` → `DIR`, and the old folder is put
back if the second rename fails. A save killed between those two renames leaves `DIR` missing and the previous model
in `.DIR.old-*`. The next save to `DIR` (holding the lock, so no live save can be affected) restores such a backup
when `DIR` is missing (it is the user's previous model), deletes other `.DIR.tmp-*`/`.DIR.old-*` folders (unfinished
saves, or previous models already replaced) and logs each step. Without `fcntl` (Windows) they are only reported.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from hf_moe_prune.export.filesystem import exchange, fsync

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale folders are reported, never removed
    fcntl = None

logger = logging.getLogger(__name__)

# What `overwrite` may replace: files that transformers and this library write into a model folder. Anything else
# (a script, `.git`, notes, a dataset) means the folder is not only a model, and the save is refused.
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")
MODEL_FILES = (
    *WEIGHT_FILES,
    *"""
    config.json generation_config.json moe_pruning_plan.json README.md modeling_pruned.py
    configuration_pruned.py tokenizer.json tokenizer_config.json tokenizer.model special_tokens_map.json
    added_tokens.json vocab.json vocab.txt merges.txt spiece.model chat_template.jinja
    chat_template.json processor_config.json preprocessor_config.json statistics.json moe_elastic_plans.json
    """.split(),
)
MODEL_DIRS = ("additional_chat_templates",)  # transformers 5 saves extra chat templates in this subfolder


def _hidden(target: Path, kind: str) -> list[Path]:
    """`.NAME.tmp-*` or `.NAME.old-*` folders of earlier saves to `target` (exactly the names `_sibling` makes)."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{kind}-[0-9a-f]{{8}}")
    entries = [target.parent / n for n in os.listdir(target.parent)] if target.parent.is_dir() else []
    return sorted((p for p in entries if pattern.fullmatch(p.name) and p.is_dir()), key=lambda p: p.stat().st_mtime)


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{kind}-{uuid.uuid4().hex[:8]}"


def _local_dirs(sources: Iterable[str | os.PathLike | None]) -> list[Path]:
    return [Path(s).resolve() for s in sources if s and os.path.isdir(s)]


def _not_model_files(folder: Path) -> list[str]:
    """Entries of `folder` that are not files of a model folder (all of them when it holds no config and weights, and
    is not a folder of calibration statistics)."""
    names = sorted(os.listdir(folder))
    unknown = []
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            inside = os.listdir(path)
            if name not in MODEL_DIRS or not all(n.endswith(".jinja") for n in inside):
                unknown.append(f"{name}/")
        elif not any(fnmatch.fnmatchcase(name, p) for p in MODEL_FILES):
            unknown.append(name)
    has_weights = any(fnmatch.fnmatchcase(n, p) for n in names for p in WEIGHT_FILES)
    statistics = set(names) == {"statistics.json", "statistics.safetensors"}  # saved by `Statistics.save`
    if not unknown and not ("config.json" in names and has_weights) and not statistics:
        return names  # e.g. only a README.md or a config.json: not recognisably a model
    return unknown


def _protected() -> dict[Path, str]:
    folders = {}
    for what, where in (("the current working directory", Path.cwd), ("your home directory", Path.home)):
        with contextlib.suppress(OSError, RuntimeError, KeyError):  # a deleted working directory, no HOME
            folders[where().resolve()] = what
    return folders


def _has_content(path: Path) -> bool:
    return path.is_dir() and bool(os.listdir(path))


def check_target(
    save_directory: str | os.PathLike,
    overwrite: bool,
    sources: Iterable[str | os.PathLike | None] = (),
    option: str = "overwrite=True",
) -> Path:
    """Refuse a save that could destroy anything but a previous model; return the resolved target folder.

    A save may write into a missing or empty folder, and with `overwrite` replace a folder that holds only a model
    (config.json, weights, and the other files listed in `MODEL_FILES`). It never replaces the working directory, the
    home directory, a filesystem root, one of their parents, a source of the model (a local folder in `sources`) or a
    parent of one. Nothing is changed on disk.

    Args:
        save_directory (`str` or `os.PathLike`): The folder to save into.
        overwrite (`bool`): Whether an existing model folder may be replaced.
        sources (`Iterable[str]`, *optional*): Where the model comes from (folders or Hub ids; Hub ids are ignored).
        option (`str`, *optional*, defaults to `"overwrite=True"`): How the caller spells `overwrite` in messages.

    Raises:
        `ValueError`: the target is, or contains, a protected folder or a source of the model.
        `FileExistsError`: the target is a file, is not empty without `overwrite`, or holds files other than a model.
    """
    target = Path(save_directory).expanduser().resolve()  # symlinks resolved: the real folder is what gets replaced
    if target.parent == target:
        raise ValueError(f"{save_directory} is a filesystem root; save the model into a new subfolder instead.")
    for path, what in _protected().items():
        if target == path or target in path.parents:
            where = "is" if target == path else "contains"
            raise ValueError(f"{save_directory} {where} {what}; save the model into a new subfolder instead.")
    for source in _local_dirs(sources):
        if target == source or target in source.parents:
            where = "is" if target == source else "contains"
            raise ValueError(
                f"{save_directory} {where} a folder the model was loaded from ({source}): replacing it would destroy "
                "the source before the new model is complete, and the saved plan would name itself as base model. "
                "Save into a new folder."
            )
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{save_directory} exists and is a file; choose a folder path for the pruned model.")
    backups = _hidden(target, "old")
    if _has_content(target):
        folder = target
    elif backups and os.listdir(backups[-1]):
        folder = backups[-1]
    else:
        return target
    if folder is not target:  # a save was killed between its two renames: the previous model waits in the backup
        empty = target.is_dir()
        state = f"{save_directory} is {'empty' if empty else 'missing'}, but {folder.name} holds its previous model"
        undo = f"rmdir {target} && " if empty else ""
        fix = f"move it back with `{undo}mv {folder} {target}`, or pass {option} to replace it"
    else:
        state = f"{save_directory} exists and is not empty"
        fix = f"choose a new folder, or pass {option} (the old model is replaced only after the new save succeeded)"
    if not overwrite:
        raise FileExistsError(f"{state}; nothing was written. To save there, {fix}.")
    unknown = _not_model_files(folder)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise FileExistsError(
            f"{state} and does not hold only a model ({shown}); {option} replaces only a model folder (config.json, "
            "weights, tokenizer, plan, card), so nothing was written. Move those files away, or choose a new folder."
        )
    return target


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[bool]:
    """Hold `.NAME.lock` next to `target` for the duration of a save; yields whether a lock could be taken."""
    if fcntl is None:
        yield False
        return
    path = target.parent / f".{target.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"another save to {target} is running (it holds {path}); wait for it to end or choose another folder."
            ) from None
        try:  # a save that just finished may have unlinked the file we opened: lock the one at the path
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def recover(target: Path, locked: bool = True) -> None:
    """Finish what interrupted saves to `target` left: restore a backup whose target is missing, delete the rest.

    Only call it holding the target's lock (`locked`); without one the folders are only reported.
    """
    temporary, backups = _hidden(target, "tmp"), _hidden(target, "old")
    if not locked:
        if temporary or backups:
            names = ", ".join(p.name for p in temporary + backups)
            logger.warning("Left by interrupted saves next to %s (remove them when no save runs): %s", target, names)
        return
    if backups and not _has_content(target):  # missing (or an empty folder made since): the model is in the backup
        previous = backups.pop()  # the newest: the model the interrupted save was replacing
        if os.path.isdir(target):
            os.rmdir(target)
        os.replace(previous, target)
        logger.warning("Restored %s from %s, where an interrupted save had left the previous model.", target, previous)
    for stale in temporary + backups:
        shutil.rmtree(stale, ignore_errors=True)
        logger.warning("Removed %s, left by an interrupted save to %s.", stale, target)


def _publish(tmp: Path, target: Path) -> None:
    for root, _, files in os.walk(tmp):  # on disk before the rename makes them visible (power loss, not just kill)
        for name in files:
            fsync(Path(root) / name)
    fsync(tmp)
    if not os.path.lexists(target):
        os.replace(tmp, target)
    elif exchange(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # now the previous model; a leftover is removed by the next save
    else:
        backup = _sibling(target, "old")
        os.replace(target, backup)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(backup, target)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    fsync(target.parent)


def publish_folder(
    save_directory: str | os.PathLike,
    write: Callable[[Path], None],
    *,
    overwrite: bool = False,
    sources: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Write a folder with `write(tmp)` into a temporary sibling of `save_directory`, then publish it in one step.

    The target is checked first (`check_target`: nothing is touched when it is refused); then, holding the target's
    lock, folders left by interrupted saves are recovered (see the module docstring), `write` fills a fresh
    `.NAME.tmp-*` folder and the folder replaces the target. On any error (or interrupt) the temporary folder is
    removed and the target is left as it was.

    Args:
        save_directory (`str` or `os.PathLike`): The folder to publish.
        write (`Callable[[Path], None]`): Writes every file of the folder into the path it gets.
        overwrite (`bool`, *optional*, defaults to `False`): Replace an existing model folder.
        sources (`Iterable[str]`, *optional*): Folders the content comes from, which must not be replaced.

    Returns:
        `Path`: the published folder (symlinks resolved).
    """
    sources = list(sources)
    target = check_target(save_directory, overwrite, sources)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target) as locked:
        recover(target, locked)
        check_target(save_directory, overwrite, sources)  # again: the state before the lock may have changed
        tmp = _sibling(target, "tmp")
        try:
            write(tmp)
            _publish(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
