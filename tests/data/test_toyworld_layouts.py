"""The miniature's layout comes from the data set classes: the files the generator writes
are exactly the files the classes list, and they hold the rendered pictures, trainIds and
captions; the weather passes cover every condition; the CLI keeps its arguments."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from diffprompt import labels
from diffprompt.data import (
    DATASETS,
    SPLITS,
    UNLABELED_SPLITS,
    available_splits,
    build_dataset,
)
from diffprompt.data.datasets import GTA5, SYNTHIA, Cityscapes, Mapillary
from diffprompt.data.registry import dataset_class
from diffprompt.data.toyworld import (
    CONDITION_PASSES,
    CONDITION_WORDS,
    DEFAULT_COUNTS,
    DOMAINS,
    ToyWorldConfig,
    build_layout,
    miniature,
    render_sample,
    sample_camera,
    sample_files,
    sample_seed,
)
from diffprompt.data.toyworld.layouts import LABEL_IDS, NAMERS
from diffprompt.data.toyworld.render import Frame, base_look, noise_tiles
from diffprompt.data.toyworld.world import M_SKY, TERRAIN, TRAIN, TRUCK


def _config(root: Path) -> ToyWorldConfig:
    """Return the configuration a generated miniature was made with (from its stamp)."""
    stamp = json.loads((root / "toyworld.json").read_text())
    fields = ToyWorldConfig.__dataclass_fields__
    return ToyWorldConfig(**{k: v for k, v in stamp.items() if k in fields})


def _files_on_disk(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_generated_files_are_exactly_the_files_the_classes_list(mini_root):
    counts = _config(mini_root).split_counts()
    listed = {"toyworld.json"}
    for name in DATASETS:
        on_disk = available_splits(name, mini_root)
        if name in counts:  # every generated split, and (GTA5) the split.mat ones
            assert set(counts[name]) <= set(on_disk), (name, on_disk)
        for split in on_disk:
            ds = build_dataset(name, split, mini_root)
            folder = ds.root.relative_to(mini_root)
            if name in counts and split in counts[name]:
                assert len(ds) == counts[name][split], (name, split)
            assert ds.labeled == (split not in UNLABELED_SPLITS[name])
            for image, label in ds.files:
                listed.add(str(image.relative_to(mini_root)))
                if label is not None:
                    listed.add(str(label.relative_to(mini_root)))
            listed.add(str(folder / "captions.json"))
    listed |= {"gta5/" + GTA5.split_file, "mapillary/" + Mapillary.config_files[0]}
    assert _files_on_disk(mini_root) == listed


def test_sample_files_follow_the_real_layouts():
    files = sample_files("cityscapes", "val", 4, seed=0)
    assert files.folder == "cityscapes" and files.name == "lindau_000001_000019"
    assert files.image == "leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png"
    assert files.label == "gtFine/val/lindau/lindau_000001_000019_gtFine_labelIds.png"
    files = sample_files("acdc_snow", "test", 21, seed=0)
    assert files.folder == "acdc" and files.label is None  # withheld, as in the real ACDC
    assert files.image == "rgb_anon/snow/test/GOPR0723/GOPR0723_frame_000037_rgb_anon.png"
    files = sample_files("mapillary", "train", 0, seed=0)
    assert files.image.startswith("training/images/") and files.image.endswith("000.jpg")
    assert files.label == f"training/v1.2/labels/{files.name}.png"
    assert sample_files("darkzurich", "train", 0, seed=0).label is None
    assert sample_files("gta5", "all", 0, seed=0).image == "images/00001.png"


def test_miniature_samples_are_the_rendered_ones(mini_root):
    """Each generated data set's first sample holds the rendered trainIds (as its class
    reads them), the rendered picture (lossless PNGs) and the caption."""
    cfg = _config(mini_root)
    for name, splits in cfg.split_counts().items():
        split = next(s for s in splits if s not in UNLABELED_SPLITS[name])
        ds = build_dataset(name, split, mini_root)
        files = sample_files(name, split, 0, cfg.seed)
        index = next(k for k, (img, _) in enumerate(ds.files) if ds.name_of(img) == files.name)
        seed = sample_seed(cfg.seed, name, split, 0)
        img, lab, caption, _ = render_sample(name, seed, cfg.height, cfg.width)
        if dataset_class(name) is SYNTHIA:  # the 16-class protocol: no terrain, truck, train
            lab = np.where(np.isin(lab, (TERRAIN, TRUCK, TRAIN)), 255, lab)
        assert torch.equal(ds.masks([index])[0], torch.from_numpy(lab.astype(np.int64))), name
        sample = ds[index]
        assert sample["meta"]["caption"] == caption
        assert sample["meta"]["condition"] == DOMAINS[name].condition
        picture = (sample["image"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        if ds.files[index][0].suffix == ".png":
            assert np.array_equal(picture, img), name
        else:  # JPEG
            assert np.abs(picture.astype(int) - img).mean() < 8, name


def test_label_encodings_invert_the_class_tables():
    trainids = np.arange(labels.NUM_CLASSES)
    void_in_synthia = np.isin(trainids, (TERRAIN, TRUCK, TRAIN))
    decoded = {
        GTA5: labels.GTA5_ID_TO_TRAINID,
        Cityscapes: labels.CITYSCAPES_ID_TO_TRAINID,
        SYNTHIA: labels.SYNTHIA_ID_TO_TRAINID,
        Mapillary: labels.mapillary_lut(labels.MAPILLARY_V12_NAMES),
    }
    for cls, ids in LABEL_IDS.items():
        back = decoded[cls][ids[trainids]]
        want = np.where(void_in_synthia, 255, trainids) if cls is SYNTHIA else trainids
        assert np.array_equal(back, want), cls.__name__
        assert decoded[cls][ids[255]] == 255, cls.__name__


def test_generator_names_registered_data_sets_and_splits():
    assert set(DEFAULT_COUNTS) == set(DOMAINS) <= set(DATASETS)
    for name, splits in DEFAULT_COUNTS.items():
        assert set(splits) <= set(SPLITS[name]), name
        assert dataset_class(name) in NAMERS
    # the domains' seeds follow the order of DOMAINS
    assert sample_seed(7, "gta5", "all", 3) == (7, 0, 0, 3)
    assert sample_seed(0, "darkzurich", "test", 1) == (0, 9, 3, 1)


def test_weather_passes_cover_every_condition():
    conditions = {d.condition for d in DOMAINS.values()}
    assert conditions == set(CONDITION_WORDS) == set(CONDITION_PASSES)
    domain = DOMAINS["acdc_rain"]
    rng = np.random.default_rng(0)
    layout = build_layout(rng, domain, sample_camera(rng, domain.camera, 32, 64))
    mats = np.array([p.material for p in layout.parts])[layout.part]
    rows = (np.arange(32, dtype=np.float32)[:, None] + 0.5) / 32
    frame = Frame(layout, domain, mats, mats == M_SKY, rows, noise_tiles())
    img = base_look(frame, np.random.default_rng(1))
    for condition, weather in CONDITION_PASSES.items():
        out = weather(img.copy(), frame, np.random.default_rng(2))
        assert out.shape == img.shape
        assert np.array_equal(out, img) == (condition == "clear"), condition


def test_cli_arguments(monkeypatch, tmp_path, capsys):
    calls = []

    def ensure_miniature(root, cfg, force=False, verbose=False):
        calls.append((root, cfg, force, verbose))
        return tmp_path

    monkeypatch.setattr(miniature, "ensure_miniature", ensure_miniature)
    args = ["--root", str(tmp_path), "--force", "--seed", "3", "--scale", "0.5"]
    assert miniature.main(args) == 0
    assert calls == [(tmp_path, ToyWorldConfig(seed=3, scale=0.5), True, True)]
    assert capsys.readouterr().out.strip() == str(tmp_path)
    assert miniature.main([]) == 0
    assert calls[1] == (None, ToyWorldConfig(), False, True)


def test_module_runs_as_a_command():
    cmd = [sys.executable, "-m", "diffprompt.data.toyworld", "--help"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "--scale" in out.stdout and "--force" in out.stdout and "--seed" in out.stdout
    assert "RuntimeWarning" not in out.stderr


def test_package_docstring_names_what_exists():
    import importlib
    import re

    import diffprompt.data.toyworld as tw

    names = re.findall(r"``([A-Za-z_][\w.]*)(?:\(\))?``", tw.__doc__)
    assert "build_layout" in " ".join(names) and len(names) > 20
    for name in names:
        if name.startswith("diffprompt."):
            importlib.import_module(name)
            continue
        obj = tw
        for part in name.split("."):
            assert hasattr(obj, part), name
            obj = getattr(obj, part)
