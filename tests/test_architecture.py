"""The package's shape: no import circle, own imports at the top, modules a reader can hold,
algorithm modules free of pandas and matplotlib, experiments/ imported only from above."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "diffprompt"
MAX_MODULE_LINES = 600
MAX_TRAINER_LINES = 300
ALGORITHMS = (
    "diffprompt.dg",
    "diffprompt.tta",
    "diffprompt.probing",
    "diffprompt.supervised",
    "diffprompt.domain_gap",
    "diffprompt.bootstrap",
)
#: The only modules outside experiments/ that may import it.
ABOVE_EXPERIMENTS = ("diffprompt.bench", "diffprompt.paper")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.Module, names: set[str], package: str, module_level_only: bool = True):
    """Yield (node, imported module) for every import of a diffprompt module; with
    ``module_level_only``, those that run when the module is imported (module body, if/try
    blocks, not functions, classes or TYPE_CHECKING blocks)."""

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and _is_type_checking(node):
                continue
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "diffprompt":
                        yield node, a.name
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                    base = f"{base}.{node.module}" if node.module else base
                if base.split(".")[0] != "diffprompt":
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    yield node, sub if sub in names else base
            if isinstance(node, ast.If | ast.Try | ast.With):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []) or []:
                        yield from visit(
                            child.body if isinstance(child, ast.ExceptHandler) else [child]
                        )
            elif not module_level_only and isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            ):
                yield from visit(node.body)

    yield from visit(tree.body)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules its import runs (module level), including the
    packages above an imported module that the importer is not itself inside."""
    mods = modules()
    names = set(mods)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        edges = set()
        for _, target in imports(tree, names, package):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix == target or not (name == prefix or name.startswith(prefix + ".")):
                    if prefix in names and prefix != name:
                        edges.add(prefix)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_the_cycle_finder_finds_a_circle_and_the_graph_sees_package_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    # trainer -> the builders; the builders -> the model (direct and package-level edges)
    assert "diffprompt.build" in graph["diffprompt.dg.trainer"]
    assert "diffprompt.model" in graph["diffprompt.build"]
    # a module importing diffprompt.dg.config also runs diffprompt/dg/__init__.py
    assert "diffprompt.dg" in graph["diffprompt.experiments.dg"]


def test_no_import_circle_inside_the_package():
    found = cycles(import_graph())
    assert not found, f"import circles: {found}"


def test_own_package_imports_stand_at_the_top_of_each_module():
    mods = modules()
    lazy = []
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        top = {id(n) for n, _ in imports(tree, set(mods), package)}
        for node, target in imports(tree, set(mods), package, module_level_only=False):
            if id(node) not in top:
                lazy.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {target}")
    assert not lazy, "imports inside functions:\n" + "\n".join(lazy)


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_600_lines(name):
    lines = modules()[name].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines"


def test_the_dg_trainer_is_under_300_lines():
    tree = ast.parse((PACKAGE / "dg" / "trainer.py").read_text())
    (trainer,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer"]
    assert trainer.end_lineno - trainer.lineno + 1 < MAX_TRAINER_LINES


def test_algorithm_modules_load_neither_pandas_nor_matplotlib():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in ALGORITHMS)
        + "print(sorted(m for m in ('pandas', 'matplotlib', 'diffprompt.experiments',"
        " 'diffprompt.viz') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out


def test_only_the_benchmark_and_the_paper_import_experiments():
    graph = import_graph()
    importers = {
        m
        for m, targets in graph.items()
        if any(t.startswith("diffprompt.experiments") for t in targets)
        and not m.startswith("diffprompt.experiments")
    }
    assert importers <= set(ABOVE_EXPERIMENTS), importers


def test_no_formatter_escape_hatches():
    root = PACKAGE.parent
    files = [
        *PACKAGE.rglob("*.py"),
        *(root / "tests").glob("*.py"),
        *(root / "notebooks").glob("*.py"),
    ]
    marker = "fmt: " + "skip"  # spelled apart so this file does not match itself
    hits = [str(p.relative_to(root)) for p in files if marker in p.read_text()]
    assert not hits, hits
