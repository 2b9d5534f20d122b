"""The import rule of core/ (installed as ``fw``): its packages import one way, lowest layer first, never in a
cycle, counting every import (at module level and inside functions alike: a function-level import hides a cycle
from Python, not from the design)."""
from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from repo_root import REPO

CORE = REPO / "core"
#: fw's packages (and top-level modules), lowest layer first: a package imports only from its own layer or below
LAYERS = (
    ("fw.errors", "fw.console", "fw.atomic", "fw.trace", "fw.distributed"),
    ("fw.plugin",),
    ("fw.config",),
    ("fw.data",),
    ("fw.model",),
    ("fw.train",),
    ("fw.infer",),
    ("fw", "fw.artifacts", "fw.runs", "fw.pipeline", "fw.plan", "fw.publish"),
    ("fw.cli", "fw.__main__"),
)
LIGHT_PACKAGES = ("plugin", "config", "cli")
HEAVY = ("torch", "transformers", "peft", "numpy")

Edges = dict[tuple[str, str], list[str]]


def is_module(core: Path, name: str) -> bool:
    """Whether ``name`` (``x`` or ``x.y``, below fw) is a module or package of ``core``."""
    path = core.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def module_name(path: Path, core: Path) -> str:
    parts = path.relative_to(core).with_suffix("").parts
    return ".".join(("fw", *parts)).removesuffix(".__init__")


def imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, core: Path) -> list[str]:
    """The fw modules an import statement of ``module`` names (``from fw import x``: the module fw.x if x is one,
    else fw itself)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = module.split(".")[: len(module.split(".")) - node.level + is_package]
        base = ".".join([*package, *([node.module] if node.module else [])])
    else:
        base = node.module
    if base == "fw":
        return [f"fw.{alias.name}" if is_module(core, alias.name) else "fw" for alias in node.names]
    return [base]


def package_of(module: str) -> str:
    """``fw.config.view`` -> ``fw.config``; ``fw.errors`` -> ``fw.errors``; ``fw`` -> ``fw``."""
    return ".".join(module.split(".")[:2])


def package_imports(core: Path = CORE) -> Edges:
    """(importing package, imported package) -> ``core/<file>:<line>`` of every import making that edge."""
    edges: Edges = defaultdict(list)
    for path in sorted(core.rglob("*.py")):
        module = module_name(path, core)
        imports = [node for node in ast.walk(ast.parse(path.read_text(), str(path)))
                   if isinstance(node, (ast.Import, ast.ImportFrom))]
        for node in sorted(imports, key=lambda node: node.lineno):
            for imported in imported_modules(node, module, path.name == "__init__.py", core):
                if imported == "fw" or imported.startswith("fw."):
                    source, target = package_of(module), package_of(imported)
                    if source != target:
                        edges[source, target].append(f"{core.name}/{path.relative_to(core)}:{node.lineno}")
    return edges


def cycle_problem(edges: Edges) -> str | None:
    """One import cycle between packages, each edge with the imports making it; None without a cycle."""
    depends_on = defaultdict(set)
    for source, target in edges:
        depends_on[source].add(target)
    try:
        graphlib.TopologicalSorter(depends_on).prepare()
    except graphlib.CycleError as error:
        cycle = error.args[1][::-1]  # graphlib lists each node before the one that imports it
        steps = [f"  {source} -> {target}: {', '.join(edges[source, target])}"
                 for source, target in zip(cycle, cycle[1:])]
        return "\n".join([f"import cycle {' -> '.join(cycle)}", *steps])
    return None


def layer_problems(edges: Edges, layers=LAYERS) -> list[str]:
    """Every import of a package from a higher layer, and every package with no layer."""
    rank = {package: index for index, layer in enumerate(layers) for package in layer}
    problems = [f"{package} has no layer: add it to LAYERS in {Path(__file__).name}"
                for package in sorted({package for edge in edges for package in edge} - rank.keys())]
    for (source, target), sites in sorted(edges.items()):
        if source in rank and target in rank and rank[target] > rank[source]:
            problems += [f"{site}: {source} imports {target}, a higher layer" for site in sites]
    return problems


# -- the rule, on fw ----------------------------------------------------------------------------------------------
def test_the_walk_sees_imports_inside_functions():
    """fw.cli imports the pipeline only when a heavy verb runs: that edge counts too."""
    edges = package_imports()
    assert ("fw.cli", "fw.pipeline") in edges and len(edges) > 30


def test_the_packages_of_fw_import_one_another_without_a_cycle():
    problem = cycle_problem(package_imports())
    assert problem is None, problem


def test_no_package_imports_from_a_higher_layer():
    assert layer_problems(package_imports()) == []


def test_every_layer_names_a_package_of_core():
    assert [package for layer in LAYERS for package in layer
            if package != "fw" and not is_module(CORE, package.removeprefix("fw."))] == []


@pytest.mark.parametrize("package", LIGHT_PACKAGES)
def test_the_light_packages_import_no_heavy_library(package):
    """fw.plugin (the API every plugin imports), fw.config and fw.cli import no torch, transformers, peft (nor
    numpy) when their modules load: the light verbs import nothing more until a heavy verb runs."""
    modules = [module_name(path, CORE) for path in sorted((CORE / package).rglob("*.py")) if path.stem != "__main__"]
    code = (f"import importlib, sys\nfor name in {modules!r}: importlib.import_module(name)\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# -- the checks themselves ----------------------------------------------------------------------------------------
def write_package(core: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (core / name).parent.mkdir(parents=True, exist_ok=True)
        (core / name).write_text(text)


def test_a_cycle_hidden_in_a_function_is_named_with_each_import(tmp_path):
    core = tmp_path / "core"
    write_package(core, {"__init__.py": "", "errors.py": "",
                         "config/__init__.py": "from fw import errors\n",
                         "config/rules.py": "def rule():\n    from fw.train.optim import OPTIMIZERS\n",
                         "train/__init__.py": "", "train/optim.py": "\nfrom fw.config import view\n"})
    edges = package_imports(core)
    assert cycle_problem(edges) == ("import cycle fw.config -> fw.train -> fw.config\n"
                                    "  fw.config -> fw.train: core/config/rules.py:2\n"
                                    "  fw.train -> fw.config: core/train/optim.py:2")
    assert layer_problems(edges) == ["core/config/rules.py:2: fw.config imports fw.train, a higher layer"]


def test_relative_imports_and_names_of_the_root_package_map_to_their_package(tmp_path):
    core = tmp_path / "core"
    write_package(core, {"__init__.py": "__version__ = '1'\n", "errors.py": "",
                         "cli/__init__.py": "from . import main\n",
                         "cli/main.py": "from fw import __version__, errors\nfrom ..config import view\n",
                         "config/__init__.py": "", "config/view.py": ""})
    assert dict(package_imports(core)) == {("fw.cli", "fw"): ["core/cli/main.py:1"],
                                           ("fw.cli", "fw.errors"): ["core/cli/main.py:1"],
                                           ("fw.cli", "fw.config"): ["core/cli/main.py:2"]}


def test_a_package_without_a_layer_is_named():
    assert layer_problems({("fw.cli", "fw.newthing"): ["core/cli/main.py:3"]}) == \
        [f"fw.newthing has no layer: add it to LAYERS in {Path(__file__).name}"]
