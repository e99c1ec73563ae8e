"""The architecture holds: every registry entry names builders that exist, config checks import no torch,
no import cycles, lower layers never import upper ones, no task branches outside finetune/tasks."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import finetune

# The registries the config checks read, each in a module that imports no torch: module -> names.
LIGHT_REGISTRIES = {
    "finetune.models": ("HEADS", "DECODERS", "ADAPTERS"),
    "finetune.run": ("OPTIMIZERS", "SCHEDULERS"),
    "finetune.data": ("DATASETS",),
    "finetune.training.loggers": ("LOGGERS",),
    "finetune.export.registry": ("FORMATS",),
}
_REFERENCE = re.compile(r"[\w.]+:\w+")  # a builder named as "package.module:attribute"


def test_light_names_match_the_builders() -> None:
    """Every entry of a light registry names builders (``"module:attribute"``) that exist and are public (a
    name another module uses is no private one)."""
    import importlib
    from dataclasses import fields

    from finetune.run.registry import Registry, resolve

    missing = []
    for module, names in LIGHT_REGISTRIES.items():
        for name in names:
            registry = getattr(importlib.import_module(module), name)
            assert isinstance(registry, Registry) and len(registry), name
            for entry in registry.values():
                for field in fields(entry):
                    value = getattr(entry, field.name)
                    if isinstance(value, str) and _REFERENCE.fullmatch(value):
                        if value.partition(":")[2].startswith("_"):
                            missing.append(f"{name}[{entry.name!r}].{field.name}={value} (private)")
                        try:
                            resolve(value)
                        except (ImportError, AttributeError):
                            missing.append(f"{name}[{entry.name!r}].{field.name}={value}")
    assert not missing


def test_config_checks_import_no_torch() -> None:
    """What a config error needs must not import torch or Lightning (seconds of start-up)."""
    registries = "; ".join(f"from {module} import {', '.join(names)}" for module, names in LIGHT_REGISTRIES.items())
    code = (
        f"import sys, finetune.run.config, finetune.tasks; {registries}; "
        "print(sorted(m for m in ('torch', 'lightning', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the layout: no import cycles, each layer imports only the layers below it ----------------

PACKAGE = Path(finetune.__file__).parent
# Top to bottom. A module may import its own layer and the ones below, never one above: the commands
# parse arguments and call training; training orchestrates a task; tasks build on export, report,
# models and data; everything stands on the run contract (run/: typed config, schedule, records,
# run directory and lock, console, optimizers, errors) and the Task interface (run.task).
LAYERS = [
    ("finetune.cli", "finetune.__main__", "finetune.commands", "finetune.api"),  # and the package's load()
    ("finetune.training",),
    ("finetune.tasks",),  # the registry and the implementations (the Task interface is run.task)
    ("finetune.export", "finetune.report"),
    ("finetune.data", "finetune.models"),
    ("finetune.run", "finetune.resources", "finetune.version"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file: at the top, in a function, or for
    type checking only."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def _layer(module: str) -> int:
    """Index in LAYERS of the most specific prefix naming ``module``; the package itself is the API
    facade (``finetune.load``), at the top."""
    if module == "finetune":
        return 0
    matches = [
        (len(prefix), i)
        for i, layer in enumerate(LAYERS)
        for prefix in layer
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1] if matches else len(LAYERS) - 1


def test_no_import_cycles_not_even_lazy_or_for_type_checking() -> None:
    graph, state, cycles = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_every_import_points_down_the_layers() -> None:
    upward = sorted(f"{name} -> {m}" for name, deps in _graph().items() for m in deps if _layer(m) < _layer(name))
    assert not upward


def test_no_two_folders_import_each_other() -> None:
    """Folders of one layer (data and models, export and report) may use each other, but only one way."""
    folder_of = {name: ".".join(name.split(".")[:2]) for name in _graph()}
    edges = {(folder_of[n], folder_of[m]) for n, deps in _graph().items() for m in deps if folder_of[n] != folder_of[m]}
    assert not sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)


def test_no_task_branches_outside_tasks() -> None:
    branches = re.compile(
        r"""task\s*[!=]=\s*["'](classification|segmentation)["']|["'](classification|segmentation)["']\s*[!=]="""
    )
    found = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in PACKAGE.rglob("*.py")
        if "tasks" not in p.parts
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if branches.search(line)
    ]
    assert not found


# What a task's objects are called where they are handed around: asking them what they have (hasattr, or
# getattr with a default) is asking which task runs.
TASK_OBJECTS = re.compile(r"(self\.)?(task|data|info|exported|bundle|run)(\.\w+)*")


def _task_classes() -> set[str]:
    """Classes of one task: defined in a task's folder, or named after a task or a decoder."""
    defined = {
        node.name
        for path in (PACKAGE / "tasks").rglob("*.py")
        if path.name != "base.py" and path.parent.name != "tasks"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    }
    named = {
        node.name
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef) and re.match(r"(Classification|Segmentation|Decoder)", node.name)
    }
    return defined | named


def test_no_type_or_attribute_questions_about_a_task_outside_tasks() -> None:
    """Outside finetune/tasks nothing asks ``isinstance(x, <a task's class>)`` or ``hasattr(task, ...)``
    (``getattr`` with a default too): a task answers through its ``Task`` methods and records."""
    classes, found = _task_classes(), []
    for path in PACKAGE.rglob("*.py"):
        if "tasks" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
                continue
            call, args = node.func.id, node.args
            kinds = args[1:2] and (args[1].elts if isinstance(args[1], ast.Tuple) else [args[1]])
            names = {ast.unparse(kind).rsplit(".", 1)[-1] for kind in kinds or ()}
            asks = call == "hasattr" or (call == "getattr" and len(args) == 3)
            if (call == "isinstance" and names & classes) or (asks and TASK_OBJECTS.fullmatch(ast.unparse(args[0]))):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}")
    assert not found


# --- the tests and the benchmarks: shared code in one module, no cycles ----------------------------

REPO = PACKAGE.parent


def _resolved_imports(path: Path) -> set[str]:
    """Every module an import in ``path`` names, relative imports resolved against its package: at the top,
    in a function or for type checking only; ``from m import n`` names ``m`` and ``m.n``."""
    module = _module_name(path).split(".")
    package = module if path.name == "__init__.py" else module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) + 1 - node.level] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            found |= {source, *(f"{source}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in tests/helpers.py and shared fixtures in tests/conftest.py: a test module that
    imports another drags in its imports and fixtures (shadowing its own) and ties the two files together."""
    tests = REPO / "tests"
    test_modules = {_module_name(path) for path in tests.rglob("test_*.py")}  # tests/unit/, tests/e2e/ included
    found = sorted(
        f"{path.relative_to(tests)} imports {name}"
        for path in tests.rglob("*.py")
        for name in _resolved_imports(path)
        if name in test_modules and name != _module_name(path)
    )
    assert not found


def _with_packages(names: set[str], importer: str) -> set[str]:
    """``names`` and the packages importing them runs first (``a.b`` for ``a.b.c``), but the importer's own."""
    own = {importer.rsplit(".", k)[0] for k in range(importer.count(".") + 1)}
    return names | ({name.rsplit(".", k)[0] for name in names for k in range(1, name.count(".") + 1)} - own)


def test_benchmarks_have_no_import_cycles() -> None:
    """benchmarks/ (the peers package and run_all included) imports in one direction, lazily or not; importing
    a package's module runs the package's __init__ first."""
    paths = {_module_name(path): path for path in (REPO / "benchmarks").rglob("*.py")}
    graph = {
        name: {m for m in _with_packages(_resolved_imports(path), name) if m in paths and m != name}
        for name, path in paths.items()
    }
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        raise AssertionError(" -> ".join(error.args[1])) from None
