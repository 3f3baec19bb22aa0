"""push_to_hub against the loopback Hub server: the real huggingface_hub client and transformers download path."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_moe_prune
from hf_moe_prune import MoEPruneConfig, find_blocks
from hf_moe_prune.export.card import attach_quality
from hf_moe_prune.export.hub import PushToHubError
from hf_moe_prune.pipeline.evaluation import evaluate
from hf_moe_prune.testing import fixture_path, mixed_texts
from hf_moe_prune.testing.hub_environment import hub_environment
from hf_moe_prune.testing.hub_server import HubServer

from .conftest import CALIBRATION

UNIFORM_FILES = {
    ".gitattributes",
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "moe_pruning_plan.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture
def hub(tmp_path):
    """A loopback Hub, with huggingface_hub and transformers pointed at it and an empty cache."""
    with HubServer(str(tmp_path / "hub")) as server, hub_environment(server, tmp_path / "hf_home"):
        yield server


@pytest.fixture(scope="module")
def trained():
    """The trained qwen3_moe fixture pruned uniformly with reap, and its tokenizer."""
    config = MoEPruneConfig(method="reap", ratio=0.5, calibration=mixed_texts(), num_samples=8, seq_len=128)
    model = AutoModelForCausalLM.from_pretrained(fixture_path("qwen3_moe"), pruning_config=config)
    return model, AutoTokenizer.from_pretrained(fixture_path("qwen3_moe"))


def _non_uniform(checkpoints):
    config = MoEPruneConfig(method="reap", allocation=[6, 3], calibration=CALIBRATION, seq_len=32, num_samples=8)
    return AutoModelForCausalLM.from_pretrained(checkpoints["qwen3_moe"], pruning_config=config)


def _commits(server, repo_id, branch="main"):
    """Summaries of the commits on `branch`, oldest first."""
    repo, commits = server.repos[repo_id], []
    oid = repo.branches[branch]
    while oid:
        commits.append(repo.commits[oid].summary)
        oid = repo.commits[oid].parent
    return commits[::-1]


def _files(server, repo_id, revision="main"):
    return set(server.repos[repo_id].head(revision).files)


def _logits(model, ids):
    # One thread, as in the subprocesses: a different thread count may change float sums in the last bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        torch.set_num_threads(threads)


def test_uniform_push_is_one_commit_and_reloads_from_the_hub(hub, trained, input_ids):
    model, tokenizer = trained
    info = model.push_to_hub("tester/reap-half", tokenizer=tokenizer)

    assert _commits(hub, "tester/reap-half") == ["initial commit", info.commit_message]
    assert _files(hub, "tester/reap-half") == UNIFORM_FILES
    assert info.oid == hub.repos["tester/reap-half"].branches["main"]
    config = json.loads(hub.read("tester/reap-half", "config.json"))
    assert config["num_experts"] == 8 and "quantization_config" not in config

    assert not any(Path(constants.HF_HUB_CACHE).glob("models--*"))  # a fresh cache: everything is downloaded
    reloaded = AutoModelForCausalLM.from_pretrained("tester/reap-half")
    torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)
    hub_tokenizer = AutoTokenizer.from_pretrained("tester/reap-half")
    assert hub_tokenizer("def f(): pass")["input_ids"] == tokenizer("def f(): pass")["input_ids"]

    card = ModelCard.load("tester/reap-half")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-generation"
    assert {"moe", "pruning", "expert-pruning", "hf_moe_prune", "reap"} <= set(card.data.tags)
    assert card.data.base_model is None  # the base was a local folder, not a Hub id
    assert 'from_pretrained("tester/reap-half")' in card.text and "import hf_moe_prune" not in card.text
    assert "| 3 | 8 / 16 |" in card.text and "Ratio: 0.5" in card.text and "arXiv:2510.13999" in card.text


def test_sharded_push_then_unsharded_push_replaces_the_shards(hub, trained):
    model, _ = trained
    model.push_to_hub("tester/sharded", max_shard_size="2MB")
    sharded = _files(hub, "tester/sharded")
    assert "model.safetensors.index.json" in sharded and len([f for f in sharded if f.startswith("model-0")]) > 1

    model.push_to_hub("tester/sharded")
    files = _files(hub, "tester/sharded")
    assert "model.safetensors" in files and not {f for f in files if f.startswith("model-0") or "index" in f}
    assert len(_commits(hub, "tester/sharded")) == 3
    reloaded = AutoModelForCausalLM.from_pretrained("tester/sharded")
    assert [b.num_experts for b in find_blocks(reloaded)] == [8] * 4


def test_pushing_again_adds_one_commit_with_the_same_files(hub, checkpoints, input_ids):
    model = _non_uniform(checkpoints)
    hf_moe_prune.push_to_hub(model, "tester/nu")
    first = _files(hub, "tester/nu")
    assert first == UNIFORM_FILES - {"tokenizer.json", "tokenizer_config.json"}
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["qwen3_moe"])
    base = AutoModelForCausalLM.from_pretrained(checkpoints["qwen3_moe"])
    options = {"seq_len": 32, "max_rows": 4, "progress": False}
    before = evaluate(base, tokenizer, CALIBRATION, **options)
    after = evaluate(model, tokenizer, CALIBRATION, reference=base, **options)
    attach_quality(model, before, after)
    model.push_to_hub("tester/nu", commit_message="Add quality")

    assert _commits(hub, "tester/nu")[1:] == [
        "Upload pruned MoE model (reap, per-layer expert counts [6, 3])",
        "Add quality",
    ]
    assert _files(hub, "tester/nu") == first
    card = ModelCard.load("tester/nu")
    assert "## Quality" in card.text and "| pruned |" in card.text and "import hf_moe_prune" in card.text

    config = json.loads(hub.read("tester/nu", "config.json"))
    assert config["quantization_config"]["experts_per_layer"] == {"model.layers.0.mlp": 6, "model.layers.1.mlp": 3}
    reloaded = AutoModelForCausalLM.from_pretrained("tester/nu")
    assert [b.num_experts for b in find_blocks(reloaded)] == [6, 3]
    torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)
    assert reloaded.moe_pruning_plan.experts_per_layer == model.moe_pruning_plan.experts_per_layer

    # Nothing changed: the client sends no commit at all.
    model.push_to_hub("tester/nu", commit_message="Add quality")
    assert len(_commits(hub, "tester/nu")) == 3


def test_a_failed_commit_leaves_no_partial_upload_and_says_why(hub, trained):
    model, tokenizer = trained
    hub.fail_next_commit = 500
    with pytest.raises(PushToHubError) as raised:
        model.push_to_hub("tester/broken", tokenizer=tokenizer)
    message = str(raised.value)
    assert "'tester/broken'" in message and hub.url in message and "HTTP 500" in message
    assert "no partial upload" in message and "HF_TOKEN" in message and "Internal Error" in message
    assert isinstance(raised.value.__cause__, HfHubHTTPError)
    assert _commits(hub, "tester/broken") == ["initial commit"] and _files(hub, "tester/broken") == {".gitattributes"}

    model.push_to_hub("tester/broken", tokenizer=tokenizer)  # the retry the message asks for
    assert _files(hub, "tester/broken") == UNIFORM_FILES


def test_auth_and_network_errors_name_the_fix(hub, trained, monkeypatch):
    model, _ = trained
    with pytest.raises(PushToHubError, match=r"(?s)HTTP 401.*HF_TOKEN.*write access to 'tester'") as raised:
        model.push_to_hub("tester/denied", token="hf_wrong")
    assert isinstance(raised.value.__cause__, HfHubHTTPError) and "tester/denied" not in hub.repos

    with HubServer() as gone:
        dead = gone.url
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    with pytest.raises(PushToHubError, match=r"(?s)could not be reached.*network") as raised:
        model.push_to_hub("tester/offline")
    assert dead in str(raised.value) and raised.value.__cause__ is not None


def test_private_revision_commit_message_and_pull_request(hub, trained, input_ids):
    model, tokenizer = trained
    model.push_to_hub("tester/options", private=True, revision="dev", commit_message="Pruned on dev")
    repo = hub.repos["tester/options"]
    assert repo.private
    assert _commits(hub, "tester/options", "dev") == ["initial commit", "Pruned on dev"]
    assert _files(hub, "tester/options") == {".gitattributes"}  # main untouched
    with pytest.raises(RepositoryNotFoundError):  # private: invisible without the token
        hf_hub_download("tester/options", "config.json", revision="dev", token=False)
    reloaded = AutoModelForCausalLM.from_pretrained("tester/options", revision="dev")
    torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits, rtol=0, atol=0)

    info = model.push_to_hub("tester/options", tokenizer=tokenizer, create_pr=True, commit_description="Please review")
    assert info.pr_url and info.pr_url.endswith("/discussions/1") and repo.pull_requests[0]["num"] == 1
    assert _files(hub, "tester/options", "refs/pr/1") == UNIFORM_FILES
    assert _files(hub, "tester/options") == {".gitattributes"}
    assert repo.head("refs/pr/1").description == "Please review"


def test_save_pretrained_with_push_to_hub_uploads_the_card(hub, trained, tmp_path):
    model, _ = trained
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="tester/saved")
    assert (tmp_path / "local" / "README.md").exists()
    assert _files(hub, "tester/saved") == UNIFORM_FILES - {"tokenizer.json", "tokenizer_config.json"}
    assert "expert-pruning" in hub.read("tester/saved", "README.md").decode()


def test_card_carries_base_model_and_license_from_a_hub_base(hub, checkpoints):
    base = checkpoints["qwen2_moe"]
    api = HfApi()
    api.create_repo("tester/base-moe")
    readme = "---\nlicense: apache-2.0\n---\n# A base MoE\n"
    api.upload_folder(repo_id="tester/base-moe", folder_path=base, commit_message="base")
    api.upload_file(path_or_fileobj=readme.encode(), path_in_repo="README.md", repo_id="tester/base-moe")
    config = MoEPruneConfig(method="frequency", ratio=0.5, calibration=CALIBRATION, seq_len=32, num_samples=8)
    model = AutoModelForCausalLM.from_pretrained("tester/base-moe", pruning_config=config)
    model.push_to_hub("tester/pruned-moe")
    card = ModelCard.load("tester/pruned-moe")
    assert card.data.base_model == "tester/base-moe" and card.data.license == "apache-2.0"
    assert "frequency" in card.data.tags


def test_card_license_from_a_local_base_folder(checkpoints, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(checkpoints["olmoe"], base)
    (base / "README.md").write_text("---\nlicense: mit\n---\n")
    config = MoEPruneConfig(method="frequency", ratio=0.5, calibration=CALIBRATION, seq_len=32, num_samples=8)
    AutoModelForCausalLM.from_pretrained(base, pruning_config=config).save_pretrained(tmp_path / "out")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "mit" and card.data.base_model is None


def test_unpruned_model_is_refused(checkpoints):
    with pytest.raises(ValueError, match="no pruning plan"):
        hf_moe_prune.push_to_hub(AutoModelForCausalLM.from_pretrained(checkpoints["mixtral"]), "tester/x")


def test_remote_code_loads_without_hf_moe_prune(hub, checkpoints, input_ids, tmp_path):
    model = _non_uniform(checkpoints)
    model.push_to_hub("tester/remote", remote_code=True)
    files = _files(hub, "tester/remote")
    assert {"modeling_pruned.py", "configuration_pruned.py", "moe_pruning_plan.json"} <= files
    config = json.loads(hub.read("tester/remote", "config.json"))
    assert "quantization_config" not in config and config["experts_per_layer"]["model.layers.1.mlp"] == 3
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_pruned.PrunedQwen3MoeForCausalLM"
    card = hub.read("tester/remote", "README.md").decode()
    assert "trust_remote_code=True" in card and "import hf_moe_prune" not in card

    # A process where hf_moe_prune cannot be imported, with its own empty cache, loads it from the Hub.
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules["hf_moe_prune"] = None  # any import of it now fails
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained("tester/remote", trust_remote_code=True)
        assert [m.gate.weight.shape[0] for m in (l.mlp for l in model.model.layers)] == [6, 3]
        torch.save(model(torch.tensor({input_ids.tolist()})).logits, {str(tmp_path / "logits.pt")!r})
    """)
    env = {key: os.environ[key] for key in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_DISABLE_XET", "HF_HUB_OFFLINE")}
    env.update(PATH="", OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "other_home"))
    subprocess.run([sys.executable, "-c", script], check=True, env=env)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), _logits(model, input_ids), rtol=0, atol=0)


def test_eval_result_mapping_renders_in_the_card(checkpoints, tmp_path):
    model = _non_uniform(checkpoints)
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["qwen3_moe"])
    result = evaluate(model, tokenizer, {"code": CALIBRATION}, seq_len=32, max_rows=2, progress=False)
    attach_quality(model, {"pruned (mine)": result})
    model.save_pretrained(tmp_path / "out")
    assert "| pruned (mine) |" in (tmp_path / "out" / "README.md").read_text()
