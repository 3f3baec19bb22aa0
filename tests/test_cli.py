"""`hf-moe-prune` end to end on the trained fixture: prune → eval → inspect → plan show/apply, and bad arguments.

The main flows run the real command in a subprocess (`python -m hf_moe_prune`); argument errors, which fail before any
model is loaded, also run in-process through `cli.main` to keep the file fast.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_moe_prune import cli
from hf_moe_prune.testing import fixture_path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
SMALL = ["--num-samples", "8", "--seq-len", "128"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hf_moe_prune_cli", *map(str, args)]  # what the hf-moe-prune script runs
    return subprocess.run(command, capture_output=True, text=True, env=env or ENV, timeout=300)


def ok(*args, env=None) -> subprocess.CompletedProcess:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """`hf-moe-prune prune` of the bundled fixture (reap, ratio 0.5): the output folder and the JSON report."""
    output = tmp_path_factory.mktemp("cli") / "pruned"
    result = ok("prune", "--method", "reap", "--ratio", "0.5", *SMALL, "--output", output, "--json", "--quiet")
    return output, json.loads(result.stdout)


def test_prune_writes_the_checkpoint_and_reports_size_and_quality(pruned):
    output, report = pruned
    for name in ("config.json", "model.safetensors", "moe_pruning_plan.json", "tokenizer.json", "README.md"):
        assert (output / name).is_file(), name
    assert report["output"] == str(output) and report["method"] == "reap"
    assert report["kept_experts_per_layer"] == {str(i): 8 for i in range(4)}
    assert report["parameters"]["after"] < report["parameters"]["before"]
    assert report["safetensors_bytes"]["after"] < report["safetensors_bytes"]["before"]
    after = report["quality"]["after"]
    assert set(after["domains"]) == {"code", "prose"}
    assert 0 < after["overall"]["kl"] and 0 < after["overall"]["top1_agreement"] < 1


def test_eval_prints_perplexity_kl_and_agreement_against_the_recorded_base(pruned):
    output, _ = pruned
    result = ok("eval", output, "--seq-len", "128", "--max-rows", "4", "--quiet")
    assert f"vs {fixture_path('qwen3_moe')}" in result.stdout  # the base model recorded in the pruned checkpoint
    number = r"\s+(\d+\.\d+)"
    rows = {
        m[0]: tuple(map(float, m[1:])) for m in re.findall(r"^\s+(code|prose|all)" + number * 3, result.stdout, re.M)
    }
    assert set(rows) == {"code", "prose", "all"}, result.stdout
    for perplexity, kl, agreement in rows.values():
        assert perplexity > 1 and kl > 0 and 0 < agreement < 1


@contextlib.contextmanager
def loopback_hub(tmp_path):
    try:
        from hf_moe_prune.testing.hub_environment import hub_environment
        from hf_moe_prune.testing.hub_server import HubServer
    except ImportError:
        yield None
        return
    with HubServer(str(tmp_path / "hub")) as server, hub_environment(server, tmp_path / "hf_home"):
        yield server


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[:2] == (height, width)  # decodes
    return width, height


def test_inspect_writes_usage_json_and_png_plots(pruned, tmp_path):
    output, _ = pruned
    out = tmp_path / "inspect"
    result = ok("inspect", "--plan", output, "--num-samples", "4", "--seq-len", "64", "--output", out, "--json")
    report = json.loads(result.stdout)
    usage = json.loads((out / "expert_usage.json").read_text())
    assert set(usage["domains"]) == {"code", "prose", "mixed"} and usage["score_domain"] == "mixed"
    for domain in usage["domains"].values():
        assert len(domain["layers"]) == 4
        for layer in domain["layers"]:
            assert len(layer["count"]) == len(layer["share"]) == 16
            assert sum(layer["share"]) == pytest.approx(1.0)
            assert sum(layer["count"]) == domain["tokens"] * layer["top_k"]
            assert set(layer["scores"]) == {"frequency", "soft_count", "ean", "man", "reap"}
    pngs = {Path(f).name: Path(f) for f in report["files"] if f.endswith(".png")}
    assert set(pngs) == {"usage_heatmap.png", "score_distributions.png", "kept_experts.png"}
    for path in pngs.values():
        width, height = _png_size(path)
        assert 400 <= width <= 2500 and 150 <= height <= 1200, (path.name, width, height)
        assert path.stat().st_size < 200_000
    assert "calibration" in result.stderr  # progress bars on stderr, stdout is clean JSON


def test_plan_show_and_plan_apply_reproduce_the_pruned_model(pruned, tmp_path, capsys):
    output, _ = pruned
    plan = json.loads((output / "moe_pruning_plan.json").read_text())
    assert cli.main(["plan", "show", str(output)]) == 0
    shown = capsys.readouterr().out
    assert "method reap" in shown and "kept 32 of 64" in shown
    for block in plan["blocks"]:
        assert f"{len(block['kept'])}/{block['num_experts']}  " + " ".join(map(str, block["kept"])) in shown

    applied = tmp_path / "applied"
    args = ["plan", "apply", output / "moe_pruning_plan.json", fixture_path("qwen3_moe"), "--output", applied]
    with loopback_hub(tmp_path) as hub:  # --push-to-hub against a local Hub server, when the package ships one
        push = ["--push-to-hub", "tester/applied"] if hub else []
        result = ok(*args, *push, env={**os.environ, "OMP_NUM_THREADS": "1"} if hub else None)
    assert "Applied" in result.stdout and (applied / "tokenizer.json").is_file()
    if hub:
        assert "pushed: " in result.stdout
        assert {"model.safetensors", "moe_pruning_plan.json", "tokenizer.json"} <= set(
            hub.repos["tester/applied"].head("main").files
        )
    first, second = AutoModelForCausalLM.from_pretrained(output), AutoModelForCausalLM.from_pretrained(applied)
    ids = torch.randint(1, first.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)
    assert json.loads((applied / "moe_pruning_plan.json").read_text())["blocks"] == plan["blocks"]


def test_bad_arguments_fail_in_a_real_process_with_exit_code_2(tmp_path):
    result = run_cli("prune", "--ratio", "2", "--output", tmp_path / "out")
    assert result.returncode == 2 and "--ratio" in result.stderr and "(0, 1)" in result.stderr
    assert not (tmp_path / "out").exists() and result.stdout == ""


def test_help_and_usage_errors_answer_before_torch_is_imported():
    """`--help`, `--version` and argparse's usage errors come from the launcher, which parses before importing the
    library (torch, transformers: seconds); the bound is generous for a loaded machine, typical runs take ~0.1 s."""
    import statistics
    import time

    for args, code in ((["--help"], 0), (["prune", "--help"], 0), (["--version"], 0), (["prune", "--ratio", "2"], 2)):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            result = run_cli(*args)
            times.append(time.perf_counter() - start)
            assert result.returncode == code, result.stderr
        assert statistics.median(times) < 2.0, (args, times)
    probe = "import sys, hf_moe_prune_cli.parser as p; p.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_the_launcher_lists_what_the_registries_hold():
    import hf_moe_prune  # noqa: F401  (fills the registries)
    from hf_moe_prune.registries import ALLOCATIONS, COMPENSATIONS, DEFAULT_METHOD, METHODS, names_for
    from hf_moe_prune_cli import names as launcher

    assert launcher.METHODS == tuple(METHODS.names()) and launcher.DEFAULT_METHOD == DEFAULT_METHOD
    assert launcher.EXPERT_ALLOCATIONS == tuple(names_for(ALLOCATIONS, "expert"))
    assert launcher.NEURON_ALLOCATIONS == tuple(names_for(ALLOCATIONS, "neuron"))
    assert launcher.COMPENSATIONS == tuple(COMPENSATIONS.names())
    assert launcher.version() == hf_moe_prune.__version__


@pytest.mark.parametrize(
    "args, message",
    [
        (["prune", "--method", "nope"], "Unknown pruning method 'nope'"),
        (["prune", "--ratio", "2"], "must be in (0, 1)"),
        (["prune", "{tmp}/no_such_model"], "is not an existing folder"),
        (["prune", "--output", "{full}"], "exists and is not empty"),
        (["prune", "--calibration", "{tmp}/missing.jsonl"], "does not exist"),
        (["prune", "--allocation", "8,x"], "--allocation"),
        (["inspect", "--plan", "{tmp}/missing.json"], "no pruning plan"),
        (["eval", "--data", "{tmp}/missing.txt"], "does not exist"),
        (["plan", "show", "{tmp}"], "no pruning plan"),
    ],
)
def test_bad_arguments_give_a_clear_message_and_write_nothing(args, message, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    args = [a.format(tmp=tmp_path, full=full) for a in args]
    if "--output" not in args and args[0] in ("prune", "inspect"):
        args += ["--output", str(tmp_path / "out")]
    assert _exit_code(args) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["full", "keep.txt"]


def _exit_code(args: list[str]) -> int:
    try:
        return cli.main(args)
    except SystemExit as error:  # argparse's own errors
        return error.code


def test_missing_matplotlib_names_the_extra_and_still_writes_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    out = tmp_path / "inspect"
    code = cli.main(["inspect", "--num-samples", "2", "--seq-len", "32", "--output", str(out)])
    assert code == 1
    assert "pip install 'hf-moe-prune[plots]'" in capsys.readouterr().err
    assert json.loads((out / "expert_usage.json").read_text())["domains"]
    assert not list(out.glob("*.png"))


LM_EVAL_TASK = """\
task: local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def test_lm_eval_runs_a_local_task_on_the_in_memory_model(pruned, tmp_path):
    pytest.importorskip("lm_eval")  # the lm-eval extra; its own tasks download datasets, this one is a local file
    output, _ = pruned
    questions = [("import os\nimport", [" sys", " ]]]"]), ("def add(a, b):\n    return a", [" + b", " ((("])]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": 0}) + "\n" for q, c in questions))
    (tmp_path / "local_choice.yaml").write_text(LM_EVAL_TASK.format(data=data))
    env = {**ENV, "HF_DATASETS_OFFLINE": "1"}
    args = ["--tasks", "local_choice", "--include-path", tmp_path, "--max-rows", "1", "--seq-len", "64"]
    report = json.loads(ok("eval", output, *args, "--json", "--quiet", env=env).stdout)
    assert 0 <= report["tasks"]["local_choice"]["acc,none"] <= 1 and report["quality"]["overall"]["kl"] > 0


def test_lm_eval_tasks_without_the_extra_name_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    assert cli.main(["eval", "--tasks", "hellaswag"]) == 1
    assert "pip install 'hf-moe-prune[lm-eval]'" in capsys.readouterr().err


def test_help_documents_the_subcommands_and_exit_codes():
    text = cli.build_parser().format_help()
    for word in ("prune", "inspect", "eval", "plan", "exit codes", "bad usage"):
        assert word in text


def test_prune_with_healing_from_the_command_line(tmp_path):
    healed = tmp_path / "healed"
    args = ["prune", "--method", "reap", "--ratio", "0.5", *SMALL, "--no-eval", "--healing", "3", "--output", healed]
    result = ok(*args)
    assert "healed: 3 steps" in result.stdout
    assert json.loads((healed / "moe_pruning_plan.json").read_text())["healing"]["steps"] == 3
    options = '{"lr": 0.001, "train": ["experts"], "eval_every": 2}'
    args = [*args[:-1], tmp_path / "options", "--healing-options", options]
    ok(*args)
    record = json.loads((tmp_path / "options" / "moe_pruning_plan.json").read_text())["healing"]
    assert record["options"]["lr"] == 0.001 and record["options"]["train"] == ["experts"] and record["steps"] == 3


@pytest.mark.parametrize(
    ("options", "words"),
    [("[1]", "must be a JSON object"), ("{lr", "not valid JSON"), ('{"step": 3}', "did you mean 'steps'")],
)
def test_bad_healing_options_fail_before_loading(tmp_path, options, words):
    args = ["prune", "--method", "reap", *SMALL, "--healing", "3", "--healing-options", options]
    result = run_cli(*args, "--output", tmp_path / "out")
    assert result.returncode != 0 and words.lower() in result.stderr.lower() and not (tmp_path / "out").exists()


def test_healing_options_need_a_number_of_steps(tmp_path):
    result = run_cli("prune", "--method", "reap", *SMALL, "--healing-options", '{"lr": 1}', "--output", tmp_path / "o")
    assert result.returncode != 0 and "--healing STEPS" in result.stderr and not (tmp_path / "o").exists()


def test_prune_tenp_from_the_command_line(tmp_path):
    output = tmp_path / "tenp"
    args = ["prune", "--method", "tenp", "--ratio", "0.4", *SMALL, "--no-eval", "--output", output, "--json"]
    report = json.loads(ok(*args, "--quiet").stdout)
    assert report["kept_experts_per_layer"] == {str(i): 16 for i in range(4)}  # every expert stays
    kept = list(report["kept_neurons_per_layer"].values())
    # tenp's default flat schedule: every layer alike, up to the rounding repair (one step of 8 of 64 neurons)
    assert max(kept) - min(kept) <= 8 / 64 and 0.5 <= min(kept) <= 0.65
    assert report["parameters"]["after"] < report["parameters"]["before"]
    reloaded = AutoModelForCausalLM.from_pretrained(output)
    assert sum(p.numel() for p in reloaded.parameters()) == report["parameters"]["after"]


def test_prune_streaming_from_the_command_line(tmp_path):
    output = tmp_path / "streamed"
    args = ["prune", "--method", "reap", "--ratio", "0.5", "--streaming", *SMALL, "--no-eval", "--output", output]
    report = json.loads(ok(*args, "--json", "--quiet").stdout)
    assert report["kept_experts_per_layer"] == {str(i): 8 for i in range(4)}
    plan = json.loads((output / "moe_pruning_plan.json").read_text())
    assert plan["calibration"]["streaming"]["propagation"] == "dense"


def test_prune_an_encoder_decoder_model_from_the_command_line(tmp_path):
    """Switch Transformers loads as a seq2seq LM; both stacks are calibrated and evaluated."""
    from transformers import AutoModelForSeq2SeqLM

    from hf_moe_prune.testing import SAMPLE_TEXT, save_tiny_model

    model = save_tiny_model("switch_transformers", tmp_path / "switch", router_scale=4.0)
    (tmp_path / "text.txt").write_text(SAMPLE_TEXT * 8)
    output = tmp_path / "pruned"
    data = ["--calibration", tmp_path / "text.txt", "--eval-data", tmp_path / "text.txt", "--seq-len", "32"]
    args = ["prune", model, "--method", "reap", "--ratio", "0.5", *data, "--num-samples", "4", "--output", output]
    report = json.loads(ok(*args, "--json", "--quiet").stdout)
    assert report["kept_experts_per_layer"] == {str(i): 4 for i in range(4)}  # encoder 0-1, decoder 2-3
    assert report["quality"]["after"]["overall"]["kl"] > 0
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(output)
    assert sum(p.numel() for p in reloaded.parameters()) == report["parameters"]["after"]
