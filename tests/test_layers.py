"""The package's imports go one way: entrypoints -> stages -> building blocks -> core -> libraries.

Every import of every module is read from its source (AST), call-time imports inside functions included;
an import inside `if TYPE_CHECKING:` is an annotation, not an arrow. A module may import its own layer or a
lower one, never an entrypoint, and no chain of imports comes back to where it started.
"""

from __future__ import annotations

import ast
import fnmatch
import shutil
from pathlib import Path

from tests.conftest import ROOT

# top to bottom; a module is placed by the first pattern it matches
LAYERS = {
    "entrypoint": ["rlhf.__main__", "rlhf.*.__main__", "rlhf.cli"],
    "stage": [
        "rlhf.train",
        "rlhf.resume",
        "rlhf.config",
        "rlhf.validate",
        "rlhf.choices",
        "rlhf.evaluate",
        "rlhf.evaluate.*",
        "rlhf.compare",
        "rlhf.compare.*",
        "rlhf.summary",
        "rlhf.plots",
        "rlhf.metrics",
        "rlhf.tracking",
        "rlhf.sweep",
        "rlhf.distributed",
        "rlhf.pipeline",
        "rlhf.synth",
        "rlhf.synth.*",
        "rlhf.plan",
        "rlhf.plan.*",
    ],
    "building": [
        "rlhf.methods",
        "rlhf.methods.*",
        "rlhf.models",
        "rlhf.models.*",
        "rlhf.generation",
        "rlhf.data",
        "rlhf.data.*",
        "rlhf.hardware",
        "rlhf.rewards",
        "rlhf.hub",
        "rlhf.cache",
        "rlhf.checkpoint",
        "rlhf.monitor",
        "rlhf.tasks",
        "rlhf.tasks.*",
    ],
    "core": ["rlhf", "rlhf.schema", "rlhf.errors", "rlhf.runtime"],
}
RANK = {layer: i for i, layer in enumerate(reversed(LAYERS))}  # core 0 ... entrypoint 3


def module_name(package: Path, file: Path) -> str:
    parts = list(file.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> str | None:
    for layer, patterns in LAYERS.items():
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return layer
    return None


def imports(tree: ast.Module, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's own modules that `name` imports, anywhere in its body except TYPE_CHECKING blocks."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else source)
    return {m for m in found if m in modules}


def graph(package: Path) -> dict[str, set[str]]:
    files = {module_name(package, f): f for f in package.rglob("*.py")}
    modules = set(files)
    return {
        name: imports(ast.parse(f.read_text()), name, f.name == "__init__.py", modules) - {name}
        for name, f in files.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle found by a depth-first search (each reported once, from its first module)."""
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges[node]):
            if nxt in path:
                cycle = path[path.index(nxt) :] + [nxt]
                if not any(set(cycle) == set(c) for c in found):
                    found.append(cycle)
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    for start in sorted(edges):
        if start not in done:
            visit(start, [start])
    return found


def problems(package: Path) -> list[str]:
    edges = graph(package)
    out = [f"{m}: in no layer (add it to LAYERS in tests/test_layers.py)" for m in edges if not layer_of(m)]
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            a, b = layer_of(source), layer_of(target)
            if not a or not b:
                continue
            if b == "entrypoint" and not (a == "entrypoint" and target == "rlhf.cli"):
                out.append(f"{source} imports the entrypoint {target}")
            elif RANK[b] > RANK[a]:
                out.append(f"{source} ({a}) imports {target} ({b}): an arrow up a layer")
    out += [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return out


def test_imports_go_one_way_and_never_in_a_circle():
    assert problems(ROOT / "rlhf") == []


def test_the_check_fails_on_an_upward_import_and_on_a_cycle(tmp_path):
    copy = tmp_path / "rlhf"
    shutil.copytree(ROOT / "rlhf", copy, ignore=shutil.ignore_patterns("__pycache__", "assets", "datasets"))
    with (copy / "data" / "__init__.py").open(
        "a"
    ) as f:  # a building block reaching up into a stage, at call time
        f.write("\n\ndef _report():\n    from rlhf import summary\n\n    return summary\n")
    with (copy / "validate.py").open("a") as f:  # the stage that train runs, importing train back
        f.write("\nimport rlhf.train\n")
    found = problems(copy)
    assert "rlhf.data (building) imports rlhf.summary (stage): an arrow up a layer" in found
    assert any(p.startswith("import cycle:") and "rlhf.train" in p and "rlhf.validate" in p for p in found)
    with (copy / "hub.py").open("a") as f:
        f.write("\nfrom rlhf.__main__ import main\n")
    assert "rlhf.hub imports the entrypoint rlhf.__main__" in problems(copy)
