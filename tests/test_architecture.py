"""The package's shape: no import circle (type hints included), own imports at the top,
modules a reader can hold, algorithm modules free of pandas and matplotlib, experiments/
imported only from above, backbones/ below the data, prompts, evaluation, results and the
embedded model's training project."""

import ast
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "diffprompt"
MAX_MODULE_LINES = 600
MAX_TRAINER_LINES = 300
ALGORITHMS = (
    "diffprompt.dg",
    "diffprompt.tta",
    "diffprompt.tent",
    "diffprompt.probing",
    "diffprompt.supervised",
    "diffprompt.domain_gap",
    "diffprompt.bootstrap",
)
#: The only modules outside experiments/ that may import it.
ABOVE_EXPERIMENTS = ("diffprompt.bench", "diffprompt.paper")
#: What backbones/ (feature extractors only) may not import, with their submodules: not at
#: module level, not in a function, not under TYPE_CHECKING.
ABOVE_BACKBONES = (
    "diffprompt.data",
    "diffprompt.evaluate",
    "diffprompt.results",
    "diffprompt.prompts",
    "diffprompt.toysd",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _hinted(tree: ast.Module) -> set[int]:
    """Return the ids of the import statements inside ``if TYPE_CHECKING:`` blocks."""
    return {
        id(node)
        for block in ast.walk(tree)
        if _is_type_checking(block)
        for stmt in block.body
        for node in ast.walk(stmt)
        if isinstance(node, ast.Import | ast.ImportFrom)
    }


def _imported(node: ast.AST, names: set[str], package: str):
    """Yield the diffprompt modules an import statement names (none for another node)."""
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name.split(".")[0] == "diffprompt":
                yield a.name
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative import
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            base = f"{base}.{node.module}" if node.module else base
        if base.split(".")[0] != "diffprompt":
            return
        for a in node.names:
            sub = f"{base}.{a.name}"
            yield sub if sub in names else base


def imports(tree: ast.Module, names: set[str], package: str, module_level_only: bool = True):
    """Yield (node, imported module) for every import of a diffprompt module; with
    ``module_level_only``, those at module level (module body, if/try/with blocks,
    ``if TYPE_CHECKING:`` blocks included: a circle through type hints is still a circle),
    else every one (functions, classes, loops too)."""
    if not module_level_only:
        for node in ast.walk(tree):
            for target in _imported(node, names, package):
                yield node, target
        return

    def visit(body):
        for node in body:
            for target in _imported(node, names, package):
                yield node, target
            if isinstance(node, ast.If | ast.Try | ast.With):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []) or []:
                        yield from visit(
                            child.body if isinstance(child, ast.ExceptHandler) else [child]
                        )

    yield from visit(tree.body)


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def sources() -> dict[str, tuple[str, str]]:
    """Module -> (its package, its source) for every module of diffprompt."""
    return {name: (_package_of(name, p), p.read_text()) for name, p in modules().items()}


def import_graph(mods: dict[str, tuple[str, str]] | None = None) -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level, of ``mods`` ({module:
    (package, source)}; default: diffprompt's). An import that runs adds the packages above
    the imported module that the importer is not itself inside (their ``__init__`` runs
    too); one under ``if TYPE_CHECKING:`` adds the module its type hints name, nothing else
    (nothing runs)."""
    mods = sources() if mods is None else mods
    names = set(mods)
    graph: dict[str, set[str]] = {}
    for name, (package, source) in mods.items():
        tree = ast.parse(source)
        hinted = _hinted(tree)
        edges = set()
        for node, target in imports(tree, names, package):
            if id(node) in hinted:
                edges |= {target} & names - {name}
                continue
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


def forbidden_imports(
    mods: dict[str, tuple[str, str]], below: str, above: Sequence[str]
) -> list[str]:
    """Return "module:line imports target" for every import, wherever it stands (module
    level, function, TYPE_CHECKING block), by a module of the package ``below`` of one of
    ``above`` or their submodules; ``mods`` as :func:`import_graph` takes them."""
    names = set(mods)
    found = []
    for name, (package, source) in mods.items():
        if not (name == below or name.startswith(below + ".")):
            continue
        for node, target in imports(ast.parse(source), names, package, module_level_only=False):
            if any(target == a or target.startswith(a + ".") for a in above):
                found.append(f"{name}:{node.lineno} imports {target}")
    return found


#: A tiny fake package for the self-tests: (package, source) per module.
FAKE = {
    "diffprompt.a": ("diffprompt", "import diffprompt.b\n"),
    "diffprompt.b": (
        "diffprompt",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from diffprompt.a import X\n",
    ),
    "diffprompt.data": ("diffprompt.data", ""),
    "diffprompt.data.transforms": ("diffprompt.data", ""),
    "diffprompt.database": ("diffprompt", ""),
    "diffprompt.backbones": ("diffprompt.backbones", ""),
    "diffprompt.backbones.hub": ("diffprompt.backbones", "import diffprompt.database\n"),
    "diffprompt.backbones.x": (
        "diffprompt.backbones",
        "from typing import TYPE_CHECKING\n"
        "from diffprompt.backbones import hub\n"
        "from .. import data\n"
        "if TYPE_CHECKING:\n"
        "    from diffprompt.b import Y\n"
        "def f():\n"
        "    for _ in range(2):\n"
        "        import diffprompt.data.transforms\n",
    ),
}


def test_the_cycle_finder_finds_a_circle_and_the_graph_sees_package_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    # trainer -> the builders; the builders -> the model (direct and package-level edges)
    assert "diffprompt.build" in graph["diffprompt.dg.trainer"]
    assert "diffprompt.model" in graph["diffprompt.build"]
    # a module importing diffprompt.dg.config also runs diffprompt/dg/__init__.py
    assert "diffprompt.dg" in graph["diffprompt.experiments.dg"]
    # an import under TYPE_CHECKING is an edge to the module it names (options reads
    # config for its type hints; build names dg.config's TrainConfig, not dg/__init__)
    assert "diffprompt.toysd.config" in graph["diffprompt.toysd.options"]
    assert "diffprompt.dg.config" in graph["diffprompt.build"]
    assert "diffprompt.dg" not in graph["diffprompt.build"]


def test_a_circle_through_type_hints_is_found():
    graph = import_graph(FAKE)
    assert graph["diffprompt.b"] == {"diffprompt.a"}  # only under TYPE_CHECKING
    assert cycles(graph) == [["diffprompt.a", "diffprompt.b"]]
    # a function's import is not an edge of the graph (it runs only when called)
    assert "diffprompt.data.transforms" not in graph["diffprompt.backbones.x"]


def test_no_import_circle_inside_the_package():
    found = cycles(import_graph())
    assert not found, f"import circles: {found}"


def test_the_backbone_check_finds_every_kind_of_forbidden_import():
    found = forbidden_imports(FAKE, "diffprompt.backbones", ("diffprompt.data", "diffprompt.b"))
    assert set(found) == {
        "diffprompt.backbones.x:3 imports diffprompt.data",  # relative, at the top
        "diffprompt.backbones.x:5 imports diffprompt.b",  # under TYPE_CHECKING
        "diffprompt.backbones.x:8 imports diffprompt.data.transforms",  # in a function's loop
    }  # not backbones' own hub, nor diffprompt.database (which only starts like data)


def test_backbones_import_neither_data_prompts_evaluation_results_nor_toysd():
    found = forbidden_imports(sources(), "diffprompt.backbones", ABOVE_BACKBONES)
    assert not found, "backbones/ holds feature extractors only:\n" + "\n".join(found)


def test_own_package_imports_stand_at_the_top_of_each_module():
    mods = modules()
    lazy = []
    for name, path in mods.items():
        package = _package_of(name, path)
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
        *(root / "tests").rglob("*.py"),
        *(root / "notebooks").glob("*.py"),
    ]
    marker = "fmt: " + "skip"  # spelled apart so this file does not match itself
    hits = [str(p.relative_to(root)) for p in files if marker in p.read_text()]
    assert not hits, hits
