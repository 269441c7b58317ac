"""The package's layout, read from its imports: no circle, no arrow from a lower floor to a higher one, and
the root holding only what every command shares (docs/architecture.md draws the same floors)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cifar_mlflow"

# Bottom to top. A module may import its own floor's and the floors below; the root `__init__` (the
# public names, loaded on first use) sits above them all.
FLOORS = [
    {"errors", "redaction", "interrupts", "distributed", "records", "metrics", "plots", "hardware"},
    {"models", "data"},
    {"config", "arguments"},
    {"core"},  # the training run: no MLflow, no Optuna, no argparse
    {"tracking"},  # the MLflow edge
    {"train"},  # the training command
    {"tune", "bench", "compare"},  # the commands built on it
    {"cli", "__main__"},  # `cifar-mlflow COMMAND`: loads the commands by name
]
SHARED_ROOT_MODULES = FLOORS[0] | FLOORS[2] | FLOORS[-1]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("cifar_mlflow", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports, wherever in the file (inside functions and TYPE_CHECKING too:
    an arrow a reader follows is an arrow). `from pkg import sub` names the submodule, not `pkg`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items() if name != "cifar_mlflow"}


def room(module: str) -> str:
    """`cifar_mlflow.core.fit` -> `core`; `cifar_mlflow.config` -> `config`."""
    return module.split(".")[1]


def floor(module: str) -> int:
    return next(i for i, rooms in enumerate(FLOORS) if room(module) in rooms)


def test_every_module_has_a_floor() -> None:
    assert {room(m) for m in graph()} <= set().union(*FLOORS)


def test_no_import_points_up_a_floor() -> None:
    upward = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets if floor(b) > floor(a))
    assert not upward


def test_no_import_circle() -> None:
    edges = graph()
    # A package's __init__ re-exporting its submodules is the package's front door, not a circle.
    edges = {a: {b for b in targets if not a.startswith(b + ".")} for a, targets in edges.items()}
    circles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not circles


def test_the_root_holds_only_shared_modules() -> None:
    root = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert root <= SHARED_ROOT_MODULES, sorted(root - SHARED_ROOT_MODULES)


def test_the_core_knows_no_mlflow_optuna_or_command_line() -> None:
    edges = {}
    for name, path in modules().items():
        if name.startswith("cifar_mlflow.core"):
            tree = ast.parse(path.read_text())
            names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            edges[name] = names & {"mlflow", "optuna", "argparse"}
    assert edges and not any(edges.values()), edges


def test_the_checker_sees_an_upward_arrow_and_a_circle(tmp_path, monkeypatch) -> None:
    """The rules above catch what they name: a core module importing tracking, and two modules importing
    each other, planted in a copy of the package."""
    import shutil

    copy = tmp_path / "cifar_mlflow"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "core" / "muon.py").write_text((copy / "core" / "muon.py").read_text()
                                           + "\nfrom cifar_mlflow.tracking import store  # planted\n")
    planted = (copy / "metrics.py").read_text() + "\nfrom cifar_mlflow import plots  # planted\n"
    (copy / "metrics.py").write_text(planted)
    monkeypatch.setitem(globals(), "PACKAGE", copy)
    edges = graph()
    assert "cifar_mlflow.tracking.store" in edges["cifar_mlflow.core.muon"]
    try:
        test_no_import_points_up_a_floor()
    except AssertionError as exc:
        assert "cifar_mlflow.core.muon -> cifar_mlflow.tracking.store" in str(exc)
    else:
        raise AssertionError("the upward arrow went unseen")
    try:
        test_no_import_circle()
    except AssertionError as exc:
        assert "cifar_mlflow.metrics" in str(exc) and "cifar_mlflow.plots" in str(exc)
    else:
        raise AssertionError("the circle went unseen")
