"""Saving never loses data (issue 15, items 2-4).

`overwrite` replaces only a model folder, never the working directory, the source model or a folder holding other
files; model, tokenizer, plan and card appear together or not at all, also when the saving process is killed (real
SIGKILLs of a real `hf-moe-prune prune` process) or the disk fills up; the next save cleans what an interrupted one
left.
"""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_moe_prune import MoEPruneConfig, cli
from hf_moe_prune.export.saving import save_pruned
from hf_moe_prune.testing import SAMPLE_TEXT, save_tiny_model

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
MODEL_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "moe_pruning_plan.json"}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A tiny qwen3_moe checkpoint with its tokenizer, and calibration text beside it."""
    root = tmp_path_factory.mktemp("safety")
    (root / "data.txt").write_text(SAMPLE_TEXT * 8)
    return Path(save_tiny_model("qwen3_moe", root / "source"))


def prune_args(source: Path, output: Path, *extra) -> list[str]:
    data = source.parent / "data.txt"
    options = ["--calibration", data, "--num-samples", "2", "--seq-len", "32", "--no-eval", "--quiet"]
    return [str(a) for a in ("prune", source, *options, "--output", output, *extra)]


@pytest.fixture(scope="module")
def pruned(source):
    """`source` pruned in memory (reap, half the experts) and its tokenizer."""
    config = MoEPruneConfig(method="reap", ratio=0.5, calibration=[SAMPLE_TEXT] * 4, num_samples=2, seq_len=32)
    return AutoModelForCausalLM.from_pretrained(source, pruning_config=config), AutoTokenizer.from_pretrained(source)


@pytest.fixture(scope="module")
def old_model(pruned, tmp_path_factory) -> Path:
    """A complete saved model, copied wherever a test needs a previous model in the target folder."""
    model, tokenizer = pruned
    folder = tmp_path_factory.mktemp("old") / "model"
    save_pruned(model, folder, tokenizer=tokenizer)
    (folder / "README.md").write_text("the previous model\n")  # tells it apart from any new save
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path → content hash of every file under `folder` (hidden ones too)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def hidden(target: Path) -> list[str]:
    """What saves to `target` leave beside it: `.NAME.tmp-*`, `.NAME.old-*`, `.NAME.lock`."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def assert_complete(folder: Path) -> None:
    """Model AND tokenizer AND plan AND card, each readable to its end."""
    assert MODEL_FILES | {"README.md"} <= {p.name for p in folder.iterdir()}, sorted(os.listdir(folder))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "moe_pruning_plan.json"):
        json.loads((folder / name).read_text())
    with safe_open(folder / "model.safetensors", "pt") as weights:
        for key in weights.keys():
            weights.get_tensor(key)
    assert "moe_pruning" in json.loads((folder / "config.json").read_text())
    assert (folder / "README.md").read_text().strip()


def copy_model(model: Path, target: Path) -> dict[str, str]:
    import shutil

    shutil.copytree(model, target)
    return snapshot(target)


# Item 2: `overwrite` deleted the whole folder it saved into.


def test_overwrite_never_replaces_the_working_directory_or_a_folder_with_other_files(pruned, tmp_path, monkeypatch):
    model, _ = pruned
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "train.py").write_text("print('train')\n")
    before = snapshot(project)
    monkeypatch.chdir(project)
    with pytest.raises(ValueError, match="current working directory"):
        model.save_pretrained(".", overwrite=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileExistsError, match=r"\.git/.*train\.py"):
        model.save_pretrained(project, overwrite=True)
    assert snapshot(project) == before and hidden(project) == []
    # A model folder with one more file of the user's in it: refused too, naming the file.
    save_pruned(model, tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("mine\n")
    with pytest.raises(FileExistsError, match="notes.txt"):
        save_pruned(model, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine\n"


def test_overwrite_replaces_a_model_folder_and_an_empty_one(pruned, old_model, tmp_path):
    model, tokenizer = pruned
    target = tmp_path / "model"
    copy_model(old_model, target)
    model.save_pretrained(target, overwrite=True)
    assert "the previous model" not in (target / "README.md").read_text()
    (tmp_path / "empty").mkdir()
    save_pruned(model, tmp_path / "empty", tokenizer=tokenizer)
    assert_complete(tmp_path / "empty")
    assert hidden(target) == [] and hidden(tmp_path / "empty") == []


def test_cli_refuses_an_output_with_other_files_before_loading(source, tmp_path, capsys):
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    (project / "train.py").write_text("print('train')\n")
    before = snapshot(project)
    assert cli.main(prune_args(source, project, "--overwrite")) == 2
    error = capsys.readouterr().err
    assert "train.py" in error and "replaces only a model folder" in error
    assert snapshot(project) == before and sorted(os.listdir(tmp_path)) == ["project"]


# Item 3: `prune SRC --output SRC --overwrite` replaced the source model.


def test_output_that_is_the_source_or_a_parent_of_it_is_refused(source, pruned, tmp_path, capsys):
    before = snapshot(source.parent)
    for output in (source, source.parent):
        assert cli.main(prune_args(source, output, "--overwrite")) == 2
        assert "a folder the model was loaded from" in capsys.readouterr().err
    plan = tmp_path / "pruned"
    save_pruned(pruned[0], plan)
    assert cli.main(["plan", "apply", str(plan), str(source), "--output", str(source), "--overwrite"]) == 2
    assert cli.main(["plan", "apply", str(plan), str(source), "--output", str(plan), "--overwrite"]) == 2
    with pytest.raises(ValueError, match="loaded from"):
        pruned[0].save_pretrained(source, overwrite=True)
    assert snapshot(source.parent) == before


def test_report_measures_the_size_before_saving(source, tmp_path, capsys):
    assert cli.main([*prune_args(source, tmp_path / "out"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["safetensors_bytes"]["before"] == (source / "model.safetensors").stat().st_size
    assert report["safetensors_bytes"]["after"] == (tmp_path / "out" / "model.safetensors").stat().st_size
    assert_complete(tmp_path / "out")
    plan = json.loads((tmp_path / "out" / "moe_pruning_plan.json").read_text())
    assert Path(plan["base_model"]).resolve() == source.resolve()


# Item 4: the CLI wrote the tokenizer after the atomic save; interrupted saves left hidden folders.


def _full_disk_in(monkeypatch, where: str) -> None:
    """Make the save run out of space in the middle of the weights or of tokenizer.json."""
    from hf_moe_prune.export import saving

    def no_space(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # what a full disk leaves: a truncated file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    if where == "weights":
        import transformers.modeling_utils

        real_weights = transformers.modeling_utils.safe_save_file

        def weights(tensors, filename, *args, **kwargs):
            real_weights(tensors, filename, *args, **kwargs)
            no_space(Path(filename))

        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", weights)
    else:
        real_tokenizer = saving.save_tokenizer

        def tokenizer(tok, folder):
            real_tokenizer(tok, folder)
            no_space(Path(folder) / "tokenizer.json")

        monkeypatch.setattr(saving, "save_tokenizer", tokenizer)


@pytest.mark.parametrize("where", ["weights", "tokenizer"])
@pytest.mark.parametrize("previous", [False, True], ids=["new", "replacing"])
def test_full_disk_leaves_no_model_without_tokenizer_and_a_rerun_works(
    where, previous, source, old_model, tmp_path, monkeypatch, capsys
):
    target = tmp_path / "out"
    old = copy_model(old_model, target) if previous else None
    with monkeypatch.context() as patch:
        _full_disk_in(patch, where)
        assert cli.main(prune_args(source, target, *(["--overwrite"] if previous else []))) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert (snapshot(target) == old) if previous else not target.exists()
    assert hidden(target) == []
    assert cli.main(prune_args(source, target, *(["--overwrite"] if previous else []))) == 0
    assert_complete(target)


def test_next_save_removes_leftovers_and_restores_a_previous_model(pruned, old_model, tmp_path, caplog):
    model, tokenizer = pruned
    target = tmp_path / "out"
    copy_model(old_model, target)
    (tmp_path / ".out.tmp-0123abcd").mkdir()  # a killed save's half-written folder
    (tmp_path / ".out.tmp-0123abcd" / "model.safetensors").write_bytes(b"\0" * 1000)
    copy_model(old_model, tmp_path / ".out.old-89abcdef")  # a previous model that was already replaced
    (tmp_path / "other").mkdir()  # not ours: untouched
    save_pruned(model, target, tokenizer=tokenizer, overwrite=True)
    assert_complete(target)
    assert hidden(target) == []
    assert sorted(os.listdir(tmp_path)) == ["other", "out"]
    # Killed between its two renames: the target is missing and the previous model waits in `.out.old-*`.
    os.rename(target, tmp_path / ".out.old-fedcba98")
    backup = snapshot(tmp_path / ".out.old-fedcba98")
    with pytest.raises(FileExistsError, match=r"mv .*\.out\.old-fedcba98"):  # without overwrite: refused, untouched
        save_pruned(model, target)
    target.mkdir()  # an empty folder made there since: the backup still counts as the target's content
    with pytest.raises(FileExistsError, match=r"mv .*\.out\.old-fedcba98"):
        save_pruned(model, target)
    assert snapshot(tmp_path / ".out.old-fedcba98") == backup
    caplog.set_level("WARNING", logger="hf_moe_prune.export.atomic")
    save_pruned(model, target, tokenizer=tokenizer, overwrite=True)  # restored first, then replaced as asked
    assert "Restored" in caplog.text and hidden(target) == []
    assert_complete(target)


def test_a_live_save_is_never_disturbed(pruned, tmp_path):
    from hf_moe_prune.export import atomic

    model, _ = pruned
    target = tmp_path / "out"
    with atomic._locked(target) as locked:
        assert locked
        (tmp_path / ".out.tmp-0123abcd").mkdir()  # the live save's folder
        with pytest.raises(RuntimeError, match="another save"):
            save_pruned(model, target)
        assert (tmp_path / ".out.tmp-0123abcd").is_dir() and not target.exists()


# Fault injection: a real `hf-moe-prune prune` process killed by SIGKILL at several points of its save.

DRIVER = textwrap.dedent(
    """
    import os, shutil, signal, sys
    import transformers.modeling_utils
    from hf_moe_prune import cli, plan
    from hf_moe_prune.export import atomic, card, saving

    point, when, nth = os.environ["KILL_AT"].split(":")
    calls = 0

    def ours(*args, **kwargs):  # renames and removals of the save's own hidden folders, not transformers' files
        return any(".tmp-" in os.path.basename(str(a)) or ".old-" in os.path.basename(str(a)) for a in args)

    def hook(owner, name, only=lambda *a, **k: True):
        real = getattr(owner, name)

        def killing(*args, **kwargs):
            global calls
            if not only(*args, **kwargs):
                return real(*args, **kwargs)
            calls += 1
            if calls == int(nth) and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(*args, **kwargs)
            if calls == int(nth) and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, name, killing)

    if os.environ.get("NO_EXCHANGE"):  # the two-rename replace of systems without an atomic exchange
        atomic.exchange = lambda first, second: False
    points = {
        "weights": (transformers.modeling_utils, "safe_save_file"),
        "tokenizer": (saving, "save_tokenizer"),
        "plan": (plan.PrunePlan, "save"),
        "card": (card, "write_model_card"),
        "exchange": (atomic, "exchange"),
        "replace": (os, "replace", ours),
        "rmtree": (shutil, "rmtree", ours),
    }
    hook(*points[point])
    sys.exit(cli.main(sys.argv[1:]))
    """
)

KILLS = [  # (where, previous model in the target, no atomic exchange, what the target then is)
    ("weights:after:1", False, False, "absent"),
    ("tokenizer:before:1", False, False, "absent"),
    ("card:before:1", True, False, "old"),
    ("replace:before:1", False, False, "absent"),  # the one rename that publishes a new folder
    ("exchange:after:1", True, False, "new"),  # published; the previous model is not yet removed
    ("replace:after:1", True, True, "backup"),  # between the two renames: the previous model waits in `.out.old-*`
    ("rmtree:before:1", True, True, "new"),  # published; the backup is not yet removed
]


@pytest.mark.parametrize("kill, previous, no_exchange, state", KILLS, ids=[k[0] for k in KILLS])
def test_killed_save_leaves_nothing_the_old_model_or_the_complete_new_one(
    kill, previous, no_exchange, state, source, old_model, pruned, tmp_path
):
    target = tmp_path / "out"
    old = copy_model(old_model, target) if previous else None
    env = {**ENV, "KILL_AT": kill, **({"NO_EXCHANGE": "1"} if no_exchange else {})}
    args = prune_args(source, target, *(["--overwrite"] if previous else []))
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    backups = [snapshot(p) for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    if state == "absent":
        assert not target.exists() and backups == []
    elif state == "backup":  # nothing published, the previous model intact beside it
        assert not target.exists() and backups == [old]
    elif state == "old":
        assert snapshot(target) == old
    else:
        assert snapshot(target) != old
        assert_complete(target)  # never a model without its tokenizer, plan or card
    # The next save to the same place cleans up (restoring a waiting previous model first) and succeeds.
    model, tokenizer = pruned
    save_pruned(model, target, tokenizer=tokenizer, overwrite=True)
    assert_complete(target)
    assert sorted(os.listdir(tmp_path)) == ["out"]
