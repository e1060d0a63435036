"""The data package as a whole: imports (no circle, nothing generated on import), the
registry's split tables, the miniature made on demand, and the per-data-set mask cache."""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import CS_TRAIN, H, W, stripes

import diffprompt.data.files
import diffprompt.data.roots
from diffprompt.data import (
    DATASETS,
    SPLITS,
    UNLABELED_SPLITS,
    DatasetError,
    available_splits,
    build_dataset,
)
from diffprompt.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    ToFloat,
    is_deterministic,
)
from diffprompt.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "diffprompt"


# ---------------------------------------------------------------- imports
def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _own_module(name: str) -> str | None:
    """Return the module file's name for an imported diffprompt name (None: not ours)."""
    while name.startswith("diffprompt"):
        path = REPO_ROOT.joinpath(*name.split("."))
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return name
        name = name.rpartition(".")[0]  # ``from pkg.module import name`` names an object
    return None


def _imports(tree: ast.Module) -> tuple[set[str], list[int]]:
    """Return (own modules imported at module level, lines of own imports below it)."""
    top, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        own = {m for m in map(_own_module, names) if m}
        if not own:
            continue
        if node in tree.body:
            top |= own
        else:
            nested.append(node.lineno)
    return top, nested


def _graph() -> tuple[dict[str, set[str]], dict[str, list[int]]]:
    """Return the module-level import graph of diffprompt.data (and what it reaches) and
    the own-package imports that stand inside functions, per module of diffprompt.data."""
    graph: dict[str, set[str]] = {}
    nested: dict[str, list[int]] = {}
    todo = [_module_name(p) for p in (PACKAGE / "data").rglob("*.py")]
    while todo:
        name = todo.pop()
        if name in graph:
            continue
        path = REPO_ROOT.joinpath(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        graph[name], lines = _imports(ast.parse(path.read_text()))
        if name.startswith("diffprompt.data") and lines:
            nested[name] = lines
        todo.extend(graph[name])
    return graph, nested


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return an import circle of ``graph`` as a path of modules, or None."""
    state: dict[str, str] = {}

    def visit(module: str, stack: list[str]) -> list[str] | None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                return stack + [dep]
            found = None if dep in state else visit(dep, stack + [dep])
            if found:
                return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        found = None if module in state else visit(module, [module])
        if found:
            return found
    return None


def test_data_modules_import_their_own_package_at_the_top_and_form_no_circle():
    graph, nested = _graph()
    assert nested == {}, f"diffprompt imports inside functions: {nested}"
    assert _circle(graph) is None, " -> ".join(_circle(graph))
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert graph["diffprompt.paths"] == set()  # a leaf
    assert "diffprompt.data.toyworld" in graph["diffprompt.data.roots"]


def test_importing_the_data_package_generates_and_reads_no_data(tmp_path):
    """Importing diffprompt.data and its generator opens nothing below a data root."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import diffprompt.paths as paths
        watched = (Path({str(tmp_path)!r}), paths.REPO_ROOT / "data")
        paths.miniature_root = lambda: watched[0] / "miniature"
        touched = []
        def hook(event, args):
            if event in ("open", "os.listdir", "os.scandir", "os.mkdir", "os.rename"):
                path = args[0]
                if isinstance(path, (str, Path)) and any(
                    Path(path).is_relative_to(w) for w in watched
                ):
                    touched.append((event, str(path)))
        sys.addaudithook(hook)
        import diffprompt.data
        import diffprompt.data.toyworld
        assert touched == [], touched
        assert list(watched[0].iterdir()) == [], list(watched[0].iterdir())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFPROMPT_")}
    subprocess.run([sys.executable, "-B", "-c", code], check=True, env=env)


# ---------------------------------------------------------------- registry tables
def test_unlabeled_splits_per_registry_name():
    assert set(UNLABELED_SPLITS) == set(DATASETS)
    assert all(UNLABELED_SPLITS[n] <= set(SPLITS[n]) for n in DATASETS)
    assert UNLABELED_SPLITS["gta5"] == UNLABELED_SPLITS["synthia"] == frozenset()
    assert UNLABELED_SPLITS["cityscapes"] == frozenset({"test"})
    assert UNLABELED_SPLITS["darkzurich"] == frozenset({"train", "test"})
    assert UNLABELED_SPLITS["acdc_fog"] == {"test", "train_ref", "val_ref", "test_ref"}


# ---------------------------------------------------------------- the miniature on demand
@pytest.fixture
def fake_miniature(monkeypatch, mini_root, clean_data_env) -> list:
    """Make ``mini_root`` the miniature; return the list of calls to ensure_miniature."""
    calls = []

    def ensure_miniature():
        calls.append(1)
        return mini_root

    monkeypatch.setattr(diffprompt.data.roots, "ensure_miniature", ensure_miniature)
    monkeypatch.setattr(diffprompt.data.files, "miniature_root", lambda: mini_root)
    return calls


def test_registry_generates_the_miniature_on_demand(fake_miniature, mini_root, monkeypatch):
    ds = build_dataset("cityscapes", "val", "miniature")
    assert ds.root == mini_root / "cityscapes" and fake_miniature == [1]
    assert build_dataset("acdc_fog", "val").root == mini_root / "acdc"  # None: the miniature
    assert available_splits("darkzurich") == ("train", "val", "test")
    assert len(fake_miniature) == 3
    # a class opened directly, or a root the per-set env var overrides, generates nothing
    assert len(DATASETS["cityscapes"](split="val", root="miniature")) == len(ds)
    monkeypatch.setenv("DIFFPROMPT_CITYSCAPES_ROOT", str(mini_root / "cityscapes"))
    assert build_dataset("cityscapes", "val").root == mini_root / "cityscapes"
    assert len(fake_miniature) == 3
    build_dataset("cityscapes", "val", "miniature")  # the explicit miniature ignores it
    assert len(fake_miniature) == 4


def test_registry_does_not_generate_for_a_data_root(fake_miniature, shared_root, monkeypatch):
    build_dataset("cityscapes", "val", shared_root)
    assert available_splits("cityscapes", shared_root) == ("train", "val", "test")
    monkeypatch.setenv("DIFFPROMPT_DATA", str(shared_root))
    assert build_dataset("cityscapes", "val").root == shared_root / "cityscapes"
    assert fake_miniature == []


def test_a_class_without_its_miniature_says_how_to_make_it(tmp_path, monkeypatch, clean_data_env):
    monkeypatch.setattr(diffprompt.data.files, "miniature_root", lambda: tmp_path / "none")
    with pytest.raises(DatasetError, match="miniature is generated by diffprompt.data"):
        DATASETS["gta5"](root="miniature")
    assert not (tmp_path / "none").exists()


# ---------------------------------------------------------------- masks
def _count_loads(ds) -> list:
    calls = []
    load = ds._load

    def counting(index):
        calls.append(index)
        return load(index)

    ds._load = counting
    return calls


def test_masks_are_the_stacked_sample_masks_read_once(shared_root):
    from diffprompt.data.files import MASKS

    MASKS.clear()
    ds = build_dataset("cityscapes", "val", root=shared_root)
    expected = torch.stack([ds[i]["mask"] for i in (1, 0, 1)])
    loads = _count_loads(ds)
    masks = ds.masks([1, 0, 1])
    assert masks.dtype == torch.int64 and masks.shape == (3, H, W)
    assert torch.equal(masks, expected)
    assert torch.equal(masks[1], torch.from_numpy(stripes(CS_TRAIN)))
    assert torch.equal(ds.masks([0, 1]), expected[[1, 0]])
    assert sorted(loads) == [0, 1]  # each label read once
    other = build_dataset("cityscapes", "val", root=shared_root)  # another object: shared
    other_loads = _count_loads(other)
    assert torch.equal(other.masks([0, 1]), expected[[1, 0]])
    assert other_loads == []
    strict = build_dataset("cityscapes", "val", root=shared_root, strict_labels=False)
    strict_loads = _count_loads(strict)
    strict.masks([0])  # another strict_labels: its own entry
    assert strict_loads == [0]


@pytest.mark.sets("cityscapes")
def test_masks_are_read_again_when_the_label_file_changes(fake_root):
    import numpy as np
    from PIL import Image

    ds = build_dataset("cityscapes", "val", root=fake_root)
    first = ds.masks([0])
    assert (first != 255).any()
    label = ds.files[0][1]
    Image.fromarray(np.zeros((H, W), np.uint8)).save(label)  # id 0: unlabeled everywhere
    os.utime(label, ns=(0, 10**18))  # a new mtime, whatever the clock's resolution
    other = build_dataset("cityscapes", "val", root=fake_root)
    loads = _count_loads(other)
    again = other.masks([0])
    assert loads == [0] and (again == 255).all()


def test_masks_of_a_transform_without_a_repr_are_read_every_time(shared_root):
    class Same:
        deterministic = True

        def __call__(self, sample):
            return ToFloat()(sample)

    ds = build_dataset("cityscapes", "val", root=shared_root, transform=Same())
    loads = _count_loads(ds)
    ds.masks([0])
    ds.masks([0])
    assert loads == [0, 0]


def test_masks_follow_a_deterministic_transform(shared_root):
    resize = Compose([Resize((4, 6)), ToFloat()])
    ds = build_dataset("acdc_night", "val", root=shared_root, transform=resize)
    loads = _count_loads(ds)
    masks = ds.masks([0, 1])
    assert masks.shape == (2, 4, 6)
    assert torch.equal(masks, torch.stack([ds[i]["mask"] for i in (0, 1)]))
    ds.masks([0, 1])
    assert loads == [0, 1, 0, 1]  # the two reads above by ds[i], none by the second masks()
    ds.transform = Resize((2, 3))  # another transform: the cache starts again
    assert ds.masks([1]).shape == (1, 2, 3)


def test_masks_are_read_every_time_under_a_random_transform(shared_root):
    crop = Compose([RandomCrop((4, 4), generator=torch.Generator().manual_seed(0)), ToFloat()])
    ds = build_dataset("cityscapes", "val", root=shared_root, transform=crop)
    loads = _count_loads(ds)
    assert ds.masks([0, 1]).shape == (2, 4, 4)
    ds.masks([0, 1])
    assert loads == [0, 1, 0, 1]
    ds.transform = lambda sample: sample  # no ``deterministic`` attribute: not cached
    ds.masks([0])
    ds.masks([0])
    assert loads[4:] == [0, 0]


def test_deterministic_flags_of_the_transforms():
    assert Resize((2, 2)).deterministic and ToFloat().deterministic
    assert Normalize.imagenet().deterministic
    assert Compose([Resize((2, 2)), Normalize.diffusion()]).deterministic
    assert Compose([]).deterministic
    for random in (RandomCrop((2, 2)), RandomHorizontalFlip(), RandomScale(0.5, 2.0)):
        assert random.deterministic is False
        assert Compose([Resize((2, 2)), random]).deterministic is False
    assert Compose([Resize((2, 2)), lambda s: s]).deterministic is False
    assert is_deterministic(None) and not is_deterministic(lambda s: s)


def test_masks_of_an_unlabeled_split_is_a_clear_error(shared_root):
    ds = build_dataset("darkzurich", "test", root=shared_root)
    with pytest.raises(DatasetError, match="darkzurich / test is an unlabeled split") as e:
        ds.masks([0])
    assert "use a labeled split" in str(e.value) and "['val']" in str(e.value)
