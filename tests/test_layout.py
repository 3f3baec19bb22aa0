"""The package layout as a contract: stages import only the stages before them, nothing forms an import cycle, every
module imports alone, modules stay small, and no module tests another's registered name."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import hf_moe_prune
from hf_moe_prune._moved import MOVED
from hf_moe_prune.registries import ALLOCATIONS, COMPENSATIONS, METHODS

ROOT = Path(hf_moe_prune.__file__).resolve().parent

# Lowest first. A module may import modules of its own layer or of layers below it, never above. Within a layer the
# imports must not form a cycle either.
LAYERS = [
    (
        "leaves",
        [
            "version",
            "registry",
            "registries",
            "healing_options",
            "statistics_options",
            "config_checks",
            "config",
            "validation",
            "bundled",
            "_moved",
        ],
    ),
    ("adapters", ["adapters", "families", "plan"]),  # the plan asks the family whether a stock config can say it
    ("reshape", ["reshape"]),  # module surgery: observers need the neuron layout, allocations the router masks
    ("calibration", ["calibration"]),
    ("methods", ["methods"]),
    ("allocate/compensate", ["allocation", "compensation"]),
    ("healing", ["healing"]),  # after the experts are removed; the pipeline passes it the measurement
    ("pipeline", ["pipeline"]),
    ("export", ["export"]),
    ("streaming", ["streaming"]),
    ("api", ["api", "statistics", "elastic"]),  # the public verbs: pipeline + export
    ("integration", ["integration"]),
    ("cli", ["cli", "__main__"]),
    ("package", ["__init__", "testing"]),
]
LAYER_OF = {name: rank for rank, (_, names) in enumerate(LAYERS) for name in names}
MAX_LINES = 300
LONG_ALLOWED = {"testing/tiny_configs.py"}  # a data table: one tiny config per family


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if "fixtures" in rel.parts:
            continue
        parts = ["hf_moe_prune", *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _stage(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _imports(module: str, path: Path) -> set[str]:
    """The package modules `module` imports (at module level or inside functions), with the parent packages whose
    `__init__` an import runs; `if TYPE_CHECKING:` imports are left out (they never run)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    targets = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
            targets |= {n for n in names if n in MODULES} or {base}
        elif isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
    found = set()
    for target in targets:
        if target.split(".")[0] != "hf_moe_prune":
            continue
        parts = target.split(".")
        for i in range(2, len(parts) + 1):  # `import a.b.c` runs a.b's __init__ too
            name = ".".join(parts[:i])
            if name in MODULES and not module.startswith(name + ".") and name != module:
                found.add(name)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_module_has_a_layer():
    unknown = sorted({_stage(m) for m in MODULES} - set(LAYER_OF))
    assert not unknown, f"give these top-level modules/packages a layer in LAYERS: {unknown}"


def test_stages_import_only_earlier_stages():
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            if LAYER_OF[_stage(target)] > LAYER_OF[_stage(module)]:
                wrong.append(f"{module} imports {target} ({LAYERS[LAYER_OF[_stage(target)]][0]} is above)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


# Run in a subprocess: fork one child per module from an interpreter without any hf_moe_prune module loaded.
_CHILD = """
import importlib, json, os, sys, traceback
failures = {}
for name in MODULES:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(name)
            message = b""
        except BaseException:
            message = traceback.format_exc(limit=4).encode()
        os.write(write, message or b"ok")
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read()
    os.waitpid(pid, 0)
    if out != b"ok":
        failures[name] = out.decode() or "the child died"
print(json.dumps(failures))
"""


def test_every_module_imports_alone():
    """`import hf_moe_prune.<module>` works for each module alone in a fresh interpreter state.

    One interpreter imports the third-party modules the package needs (torch, transformers, ...) and then forks a
    child per package module, which starts without any `hf_moe_prune` module loaded: what a fresh interpreter would
    do, without paying the third-party imports ~140 times.
    """
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, hf_moe_prune; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    external = [m for m in probe.stdout.split() if m.split(".")[0] != "hf_moe_prune"]
    script = (
        "import importlib, sys\n"
        f"for m in {external!r}:\n"
        "    try: importlib.import_module(m)\n"
        "    except Exception: pass\n"
        "assert not [m for m in sys.modules if m.startswith('hf_moe_prune')]\n"
        f"MODULES = {sorted(m for m in MODULES if m != 'hf_moe_prune.__main__')!r}\n" + _CHILD
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT.parent, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(f"{name}:\n{error}" for name, error in failures.items())


def test_modules_stay_small():
    long = []
    for path in MODULES.values():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("adapters/") or rel in LONG_ALLOWED:
            continue
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            long.append(f"{rel}: {lines} lines")
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _registered_names() -> dict[str, str]:
    """Each registered name (of a method, allocation, compensation) -> the module that registers it."""
    owners = {}
    for registry, attribute in ((METHODS, "score"), (ALLOCATIONS, "allocate"), (COMPENSATIONS, "compensate")):
        for entry in registry.values():
            fn = getattr(entry, attribute, None) or getattr(entry, "fit", None)
            owners[entry.name] = getattr(fn, "__module__", None)
    return owners


def test_no_module_tests_a_registered_name_outside_its_own_file():
    """`allocation == "outlier"`, `method in ("compel", "diep")`: such code asks the record instead.

    Only comparisons that involve a method, allocation or compensation count (`device_map == "auto"` is another
    vocabulary); records without a function (the `trapezoid` schedule, the `auto` searches) may be compared with
    nowhere."""
    owners = _registered_names()
    wrong = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            text = ast.unparse(node)
            if not any(word in text for word in ("method", "allocat", "compensat")):
                continue
            constants = [
                n.value
                for side in (node.left, *node.comparators)
                for n in ast.walk(side)
                if isinstance(n, ast.Constant)
            ]
            constants = [c for c in constants if isinstance(c, str) and c in owners]
            for name in constants:
                if owners[name] != module:
                    wrong.append(f"{module}:{node.lineno} compares with {name!r} ({owners[name]} registers it)")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_module_paths_still_import(old):
    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__name__ == MOVED[old]


def test_moved_paths_are_not_used_inside_the_package():
    uses = [
        f"{module} imports {target}"
        for module, path in MODULES.items()
        for target in _imports_raw(path)
        if target in MOVED
    ]
    assert not uses, uses


def _imports_raw(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names
