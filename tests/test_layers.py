"""The package's layers: pure layers import neither Lightning nor transformers, and nothing imports upward.

Every ``import`` in ``src/tracer_pl`` is read from the source (those inside functions and ``TYPE_CHECKING`` blocks
too), so an import that only runs on some path is still caught. The layers, bottom to top, are the table of
``docs/architecture.md``.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tracer_pl"

LAYERS = [  # bottom to top: a module may import its own layer and the ones below it
    ("foundation", ["tracer_pl.errors", "tracer_pl.keys"]),
    ("grading", ["tracer_pl.grading"]),
    ("core", ["tracer_pl.core"]),
    ("baselines", ["tracer_pl.baselines", "tracer_pl.examples"]),
    ("engines", ["tracer_pl.engines"]),
    ("training", ["tracer_pl.training"]),
    ("data", ["tracer_pl.data"]),
    ("reporting", ["tracer_pl.reporting"]),
    ("cli", ["tracer_pl.cli", "tracer_pl._graveyard", "tracer_pl"]),
]
HEAVY = ("lightning", "pytorch_lightning", "transformers", "peft", "bitsandbytes", "vllm", "datasets")
FORBIDDEN = {  # third-party packages a layer must not import
    "foundation": HEAVY, "grading": HEAVY, "core": HEAVY, "baselines": HEAVY, "reporting": HEAVY,
    "engines": ("lightning", "pytorch_lightning"),
}


def layer_of(module: str) -> int:
    """Index in LAYERS of the most specific prefix naming ``module``."""
    best, length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return best


def imports(source: str, module: str, is_package: bool, runtime_only: bool = False) -> list[str]:
    """Absolute names of everything ``source`` (the text of ``module``) imports.

    With ``runtime_only``, imports under ``if TYPE_CHECKING:`` (type hints only, never executed) are left out.
    """
    names = []
    tree = ast.parse(source)
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                parts = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.append(target)
            if target.startswith("tracer_pl"):  # `from tracer_pl.training import checkpoints` imports a module
                names += [f"{target}.{alias.name}" for alias in node.names]
    return names


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import of ``module`` that goes up a layer or reaches a forbidden package."""
    mine = layer_of(module)
    name = LAYERS[mine][0]
    found = []
    for target in imports(source, module, is_package):
        if target.startswith("tracer_pl"):
            if target == module or target.startswith("tracer_pl._graveyard"):
                continue
            try:
                theirs = layer_of(target)
            except AssertionError:  # `from tracer_pl.x import name` where name is no module
                theirs = layer_of(target.rsplit(".", 1)[0])
            if theirs > mine:
                found.append(f"{module} ({name}) imports {target} ({LAYERS[theirs][0]})")
        elif target.split(".")[0] in FORBIDDEN.get(name, ()):
            found.append(f"{module} ({name}) imports {target}")
    return found


def source_modules():
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        yield module, path, is_package


def test_no_module_imports_upward_or_a_forbidden_package():
    found = []
    for module, path, is_package in source_modules():
        if module == "tracer_pl":  # the package root re-exports the public names of every layer
            continue
        found += violations(module, path.read_text(), is_package)
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("module", "source", "expected"), [
    # a core module reaching up into the Lightning layer
    ("tracer_pl.core.dialogue", "from tracer_pl.training.module import TracerModule",
     "tracer_pl.core.dialogue (core) imports tracer_pl.training.module (training)"),
    # the same, hidden in a function
    ("tracer_pl.core.roles", "def f():\n    import tracer_pl.engines.hf.policy",
     "tracer_pl.core.roles (core) imports tracer_pl.engines.hf.policy (engines)"),
    # a pure layer importing transformers
    ("tracer_pl.grading.answers", "import transformers", "tracer_pl.grading.answers (grading) imports transformers"),
    # an engine importing Lightning
    ("tracer_pl.engines.fake", "from lightning import Trainer", "tracer_pl.engines.fake (engines) imports lightning"),
    # a relative import going up
    ("tracer_pl.grading.text", "from ..training import checkpoints",
     "tracer_pl.grading.text (grading) imports tracer_pl.training (training)"),
])
def test_the_check_catches_a_deliberate_upward_import(module, source, expected):
    assert expected in violations(module, source)


def test_downward_and_sideways_imports_pass():
    assert violations("tracer_pl.training.module", "from tracer_pl.core.dialogue import play\nimport lightning") == []
    assert violations("tracer_pl.core.dialogue", "from tracer_pl.core.seats import Seat\nimport torch") == []


def test_every_module_has_a_layer():
    for module, _, _ in source_modules():
        layer_of(module)


@pytest.mark.subprocess
def test_importing_the_pure_layers_loads_no_heavy_package():
    code = ("import sys, tracer_pl, tracer_pl.core.dialogue, tracer_pl.grading.answers, tracer_pl.baselines, "
            "tracer_pl.reporting.report, tracer_pl.engines.base, tracer_pl.engines.fake\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def import_graph():
    """``module -> set of tracer_pl modules it imports`` at run time over ``src`` (imports in functions included).

    Imports under ``TYPE_CHECKING`` never run and are left out; so is a module's import of its own parent package
    (``from tracer_pl.engines.hf import generation`` in ``tracer_pl.engines.hf.policy``), which Python runs
    before the module itself.
    """
    modules = {module: (path, is_package) for module, path, is_package in source_modules()}
    graph = {}
    for module, (path, is_package) in modules.items():
        if module in ("tracer_pl", "tracer_pl._graveyard"):  # the root re-exports every layer's public names
            continue
        targets = set()
        for target in imports(path.read_text(), module, is_package, runtime_only=True):
            while target and target not in modules:  # `from pkg.module import name` -> pkg.module
                target = target.rpartition(".")[0]
            if target and target != module and not module.startswith(target + "."):
                targets.add(target)
        graph[module] = targets
    return graph


def cycles(graph):
    """Every import cycle, each as the list of modules along it (depth-first search)."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
