"""Data sets and registry: official layouts, label mapping, sample format, every error case.

All tests use tiny fake data roots written by conftest.build_fake_root: ``shared_root``
(read-only, built once) or ``fake_root`` (fresh per test, with the sets named by
``@pytest.mark.sets``); none touches the miniature or the network.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CS_IDS,
    CS_TRAIN,
    MAP_TRAIN,
    SYN_TRAIN,
    TRAINIDS,
    H,
    W,
    build_fake_root,
    stripes,
    write_gray,
    write_palette,
    write_rgb,
    write_synthia_label,
)
from PIL import Image
from torch.utils.data import DataLoader

from diffprompt import labels
from diffprompt.data import (
    DATASETS,
    DEFAULT_SPLIT,
    SPLITS,
    DatasetError,
    DatasetNotFoundError,
    available_splits,
    build_dataset,
)
from diffprompt.data.__main__ import main
from diffprompt.data.transforms import Compose, Normalize, RandomCrop

pytestmark = pytest.mark.usefixtures("clean_data_env")

REGISTRY = tuple(
    "gta5 synthia cityscapes bdd100k mapillary acdc_fog acdc_night acdc_rain acdc_snow acdc "
    "darkzurich".split()
)

# (name, split, number of images, expected trainId stripes or None when unlabeled)
CASES = [
    ("gta5", "all", 3, CS_TRAIN),
    ("gta5", "train", 2, CS_TRAIN),
    ("gta5", "val", 1, CS_TRAIN),
    ("synthia", "all", 2, SYN_TRAIN),
    ("cityscapes", "train", 2, CS_TRAIN),
    ("cityscapes", "val", 2, CS_TRAIN),
    ("cityscapes", "test", 2, None),
    ("bdd100k", "train", 2, TRAINIDS),
    ("bdd100k", "val", 2, TRAINIDS),
    ("mapillary", "train", 2, MAP_TRAIN),
    ("mapillary", "val", 2, MAP_TRAIN),
    ("mapillary", "test", 2, None),
    ("acdc_fog", "val", 2, TRAINIDS),
    ("acdc_night", "train", 2, TRAINIDS),
    ("acdc_rain", "val", 2, TRAINIDS),
    ("acdc_snow", "test", 2, None),
    ("acdc_night", "train_ref", 2, None),
    ("acdc", "val", 8, TRAINIDS),
    ("darkzurich", "train", 2, None),
    ("darkzurich", "val", 2, TRAINIDS),
    ("darkzurich", "test", 2, None),
]


def snapshot(root: Path) -> set[str]:
    """Return every path below root (to show that opening a data set writes nothing)."""
    return {str(p) for p in root.rglob("*")}


# ---------------------------------------------------------------- registry and samples
def test_registry_names_and_splits():
    assert tuple(DATASETS) == REGISTRY
    assert set(SPLITS) == set(DEFAULT_SPLIT) == set(REGISTRY)
    assert DEFAULT_SPLIT["gta5"] == DEFAULT_SPLIT["synthia"] == "all"
    assert all(DEFAULT_SPLIT[n] == "train" for n in REGISTRY if n not in ("gta5", "synthia"))
    assert all(DEFAULT_SPLIT[n] in SPLITS[n] for n in REGISTRY)
    assert SPLITS["synthia"] == ("all",)


@pytest.mark.parametrize(("name", "split", "n", "expected"), CASES)
def test_every_dataset_loads_with_expected_trainids(shared_root, name, split, n, expected):
    ds = build_dataset(name, split=split, root=shared_root)
    assert len(ds) == len(ds.files) == n
    assert ds.name == name and ds.split == split and ds.num_classes == 19
    assert ds.labeled == (expected is not None)
    sample = ds[n - 1]
    image = sample["image"]
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    meta = sample["meta"]
    assert meta["dataset"] == name and meta["split"] == split
    assert meta["labeled"] is ds.labeled
    assert set(meta) == {"dataset", "domain", "condition", "split", "caption", "labeled"}
    assert all(v is not None for v in meta.values())
    if expected is None:
        assert "mask" not in sample
        assert all(label is None for _, label in ds.files)
    else:
        mask = sample["mask"]
        assert mask.shape == (H, W) and mask.dtype == torch.int64
        assert torch.equal(mask, torch.from_numpy(stripes(expected)))


def test_default_split_and_eval_classes(shared_root):
    assert build_dataset("gta5", root=shared_root).split == "all"
    assert build_dataset("cityscapes", root=shared_root).split == "train"
    assert build_dataset("synthia", root=shared_root).eval_classes == labels.SYNTHIA_EVAL_CLASSES
    assert len(labels.SYNTHIA_EVAL_CLASSES) == 16
    assert build_dataset("cityscapes", root=shared_root).eval_classes == tuple(range(19))


def test_names_strip_the_dataset_suffix(shared_root):
    expect = {
        "gta5": "00001",
        "synthia": "0000000",
        "cityscapes": "aachen_000000_000019",
        "bdd100k": "7d06fefd-f7be05a6",
        "acdc_fog": "GOPR0475_frame_000041",
        "darkzurich": "GOPR0356_frame_000321",
    }
    for name, first in expect.items():
        split = "val" if name == "darkzurich" else None
        assert build_dataset(name, split=split, root=shared_root)[0]["name"] == first
    ref = build_dataset("acdc_fog", split="train_ref", root=shared_root)
    assert ref[0]["name"] == "GOPR0475_frame_000041"


def test_cityscapes_label_ids_map_to_trainids(shared_root):
    # ids 7 (road), 26 (car), 1 (ego vehicle) -> trainIds 0, 13, 255
    lbl = shared_root / "cityscapes/gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    assert np.array_equal(np.array(Image.open(lbl)), stripes(CS_IDS))
    mask = build_dataset("cityscapes", "val", root=shared_root)[0]["mask"]
    assert mask[0, 0] == 0 and mask[0, 7] == 13 and mask[0, -1] == 255


@pytest.mark.sets("synthia")
def test_synthia_red_channel_is_the_class_and_green_is_ignored(fake_root):
    path = fake_root / "synthia/GT/LABELS/0000000.png"
    red = np.full((H, W), 8, dtype=np.int64)  # car
    green = np.arange(H * W).reshape(H, W) * 300  # 16-bit instance ids, many > 255
    write_synthia_label(path, red, green)
    mask = build_dataset("synthia", root=fake_root)[0]["mask"]
    assert torch.all(mask == 13)
    # PIL would read this 16-bit RGB label wrong; the loader must not depend on it
    arr = np.array(Image.open(path).convert("RGB"))
    assert not np.all(arr[..., 0] == 8)


@pytest.mark.sets("gta5")
def test_gta5_palette_label(fake_root):
    path = fake_root / "gta5/labels/00002.png"
    write_palette(path, stripes((26, 24, 23)))  # car, person, sky
    assert Image.open(path).mode == "P"
    mask = build_dataset("gta5", root=fake_root)[1]["mask"]
    assert torch.equal(mask, torch.from_numpy(stripes((13, 11, 10))))


@pytest.mark.sets("gta5")
def test_gta5_splits_need_split_mat(fake_root):
    assert [p.name for p, _ in build_dataset("gta5", "val", root=fake_root).files] == ["00003.png"]
    (fake_root / "gta5/split.mat").unlink()
    assert available_splits("gta5", fake_root) == ("all",)
    assert len(build_dataset("gta5", root=fake_root)) == 3
    with pytest.raises(DatasetNotFoundError, match="split.mat"):
        build_dataset("gta5", "train", root=fake_root)


@pytest.mark.sets("mapillary")
def test_mapillary_maps_by_name_from_config(fake_root):
    names = ["nature--sky", "object--vehicle--car", "construction--flat--road", "animal--bird"]
    (fake_root / "mapillary/config.json").write_text(
        json.dumps({"labels": [{"name": n, "readable": n} for n in names]})
    )
    write_palette(
        fake_root / "mapillary/validation/v1.2/labels/_1Gn_xkw7sa_i9GU4mkxxQ.png",
        stripes((0, 1, 2, 3)),
    )
    mask = build_dataset("mapillary", "val", root=fake_root)[0]["mask"]
    assert torch.equal(mask, torch.from_numpy(stripes((10, 13, 0, 255))))
    # config_v1.2.json wins over config.json
    (fake_root / "mapillary/config_v1.2.json").write_text(
        json.dumps({"labels": [{"name": n} for n in reversed(names)]})
    )
    mask = build_dataset("mapillary", "val", root=fake_root)[0]["mask"]
    assert torch.equal(mask, torch.from_numpy(stripes((255, 0, 13, 10))))


@pytest.mark.sets("mapillary")
def test_mapillary_split_folder_names_and_v12_download_layout(fake_root):
    ds = build_dataset("mapillary", "validation", root=fake_root)
    assert ds.split == "val" and ds.labeled
    # the v1.2 download keeps labels in <split>/labels (no v1.2/ level)
    top = fake_root / "mapillary/training"
    shutil.move(top / "v1.2" / "labels", top / "labels")
    ds = build_dataset("mapillary", "training", root=fake_root)
    assert ds.files[0][1].parent == top / "labels"
    assert torch.equal(ds[0]["mask"], torch.from_numpy(stripes(MAP_TRAIN)))


@pytest.mark.sets("bdd100k")
def test_conditions_and_captions_sidecar(shared_root, fake_root):
    cs = build_dataset("cityscapes", "val", root=shared_root)
    assert cs[0]["meta"]["caption"] == "a street in aachen"
    assert cs[0]["meta"]["condition"] == "overcast"  # the sidecar overrides "clear"
    assert cs[1]["meta"] == {**cs[1]["meta"], "caption": "", "condition": "clear"}
    acdc = build_dataset("acdc", "val", root=shared_root)
    conditions = {acdc[i]["meta"]["condition"] for i in range(len(acdc))}
    assert sorted(conditions) == ["fog", "night", "rain", "snow"]
    assert build_dataset("acdc_snow", "val", root=shared_root)[0]["meta"]["condition"] == "snow"
    assert build_dataset("darkzurich", "val", root=shared_root)[0]["meta"]["condition"] == "night"
    assert build_dataset("bdd100k", "val", root=shared_root)[0]["meta"]["condition"] == "mixed"
    (fake_root / "bdd100k/captions.json").write_text(
        json.dumps({"7d06fefd-f7be05a6": {"caption": "rain at dusk", "condition": "rain"}})
    )
    meta = build_dataset("bdd100k", "val", root=fake_root)[0]["meta"]
    assert meta["caption"] == "rain at dusk" and meta["condition"] == "rain"


@pytest.mark.sets("bdd100k")
def test_broken_captions_sidecar_is_an_error(fake_root):
    (fake_root / "bdd100k/captions.json").write_text("{not json")
    with pytest.raises(DatasetError, match="captions.json"):
        build_dataset("bdd100k", "val", root=fake_root)


def test_dataloader_collates_two_samples(shared_root):
    for split in ("val", "test"):  # labeled and unlabeled
        ds = build_dataset("cityscapes", split, root=shared_root)
        batch = next(iter(DataLoader(ds, batch_size=2)))
        assert batch["image"].shape == (2, 3, H, W)
        assert batch["name"] == ["aachen_000000_000019", "bremen_000000_000020"]
        assert batch["meta"]["dataset"] == ["cityscapes"] * 2
        assert batch["meta"]["labeled"].tolist() == [split == "val"] * 2
        assert ("mask" in batch) == (split == "val")
    ds = build_dataset(
        "acdc_night",
        "val",
        root=shared_root,
        transform=Compose([RandomCrop((4, 4)), Normalize.diffusion()]),
    )
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 4, 4) and batch["mask"].shape == (2, 4, 4)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1


@pytest.mark.sets("cityscapes", "gta5", "acdc", "synthia")
def test_available_splits(fake_root):
    assert available_splits("cityscapes", fake_root) == ("train", "val", "test")
    assert available_splits("gta5", fake_root) == ("all", "train", "val", "test")
    assert available_splits("acdc", fake_root) == ("train", "val", "test", "train_ref")
    shutil.rmtree(fake_root / "acdc/rgb_anon/rain/test")
    assert "test" not in available_splits("acdc", fake_root)
    assert "test" in available_splits("acdc_fog", fake_root)
    shutil.rmtree(fake_root / "synthia")
    assert available_splits("synthia", fake_root) == ()
    with pytest.raises(DatasetNotFoundError):
        available_splits("synthia", fake_root / "nowhere")


@pytest.mark.sets("cityscapes")
def test_per_dataset_env_var_points_at_the_folder(fake_root, tmp_path, monkeypatch):
    moved = tmp_path / "elsewhere" / "cs"
    shutil.move(fake_root / "cityscapes", moved)
    monkeypatch.setenv("DIFFPROMPT_CITYSCAPES_ROOT", str(moved))
    ds = build_dataset("cityscapes", "val", root=fake_root)
    assert ds.root == moved and len(ds) == 2
    monkeypatch.setenv("DIFFPROMPT_DARKZURICH_ROOT", str(tmp_path / "missing"))
    with pytest.raises(DatasetNotFoundError, match="DIFFPROMPT_DARKZURICH_ROOT"):
        build_dataset("darkzurich", "val", root=fake_root)


def test_data_root_env_var(shared_root, monkeypatch):
    monkeypatch.setenv("DIFFPROMPT_DATA", str(shared_root))
    assert build_dataset("bdd100k", "val").root == shared_root / "bdd100k"


# ---------------------------------------------------------------- errors at open
def test_unknown_dataset_name():
    with pytest.raises(DatasetError, match="Did you mean 'cityscapes'") as e:
        build_dataset("cityscape", root=".")
    assert not isinstance(e.value, FileNotFoundError)
    assert "darkzurich" in str(e.value)  # the valid names are listed


def test_unknown_split_and_condition(shared_root):
    with pytest.raises(DatasetError, match=r"Did you mean 'val'\?") as e:
        build_dataset("cityscapes", "vall", root=shared_root)
    assert "['train', 'val', 'test']" in str(e.value)
    with pytest.raises(DatasetError, match="Did you mean 'all'"):
        build_dataset("synthia", "al", root=shared_root)
    with pytest.raises(DatasetError, match="Did you mean 'night'"):
        DATASETS["acdc"].func(split="val", root=shared_root, conditions=("nigth",))


def test_missing_data_root(tmp_path):
    missing = tmp_path / "no_such_root"
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset("cityscapes", root=missing)
    assert isinstance(e.value, FileNotFoundError)
    msg = str(e.value)
    assert str(missing) in msg and "DIFFPROMPT_DATA" in msg and "data/README.md" in msg


@pytest.mark.sets("dark_zurich", "bdd100k")
def test_missing_dataset_folder(fake_root):
    shutil.rmtree(fake_root / "dark_zurich")
    before = snapshot(fake_root)
    with pytest.raises(FileNotFoundError) as e:
        build_dataset("darkzurich", "val", root=fake_root)
    msg = str(e.value)
    assert isinstance(e.value, DatasetNotFoundError)
    assert str(fake_root / "dark_zurich") in msg
    assert "DIFFPROMPT_DARKZURICH_ROOT" in msg and "DIFFPROMPT_DATA" in msg
    assert "data/README.md" in msg and "rgb_anon/<split>/night" in msg  # the layout
    assert snapshot(fake_root) == before  # nothing written


def test_root_pointing_at_the_dataset_folder_gets_a_hint(shared_root):
    with pytest.raises(DatasetNotFoundError, match="itself looks like the cityscapes folder"):
        build_dataset("cityscapes", root=shared_root / "cityscapes")


@pytest.mark.sets("acdc")
def test_acdc_all_needs_every_condition(fake_root):
    shutil.rmtree(fake_root / "acdc/rgb_anon/rain")
    with pytest.raises(
        DatasetNotFoundError, match="conditions on disk: \\['fog', 'night', 'snow'\\]"
    ):
        build_dataset("acdc", "val", root=fake_root)
    assert len(build_dataset("acdc_night", "val", root=fake_root)) == 2


@pytest.mark.sets("cityscapes")
def test_missing_split_lists_the_splits_on_disk(fake_root):
    shutil.rmtree(fake_root / "cityscapes/leftImg8bit/val")
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset("cityscapes", "val", root=fake_root)
    msg = str(e.value)
    assert str(fake_root / "cityscapes/leftImg8bit/val") in msg
    assert "['train', 'test']" in msg


@pytest.mark.sets("cityscapes")
def test_layout_mismatch_cityscapes_without_leftimg8bit(fake_root):
    shutil.rmtree(fake_root / "cityscapes/leftImg8bit")
    with pytest.raises(DatasetNotFoundError, match="missing leftImg8bit/") as e:
        build_dataset("cityscapes", "val", root=fake_root)
    assert "gtFine" in str(e.value)  # what was found is shown


def test_layout_mismatch_pointing_at_leftimg8bit(shared_root, monkeypatch):
    monkeypatch.setenv("DIFFPROMPT_CITYSCAPES_ROOT", str(shared_root / "cityscapes/leftImg8bit"))
    with pytest.raises(DatasetNotFoundError, match="looks like the 'leftImg8bit' folder itself"):
        build_dataset("cityscapes", "val", root=shared_root)


@pytest.mark.sets("acdc")
def test_layout_mismatch_unpacked_one_level_too_deep(fake_root):
    nested = fake_root / "acdc_tmp"
    shutil.move(fake_root / "acdc", nested)
    (fake_root / "acdc").mkdir()
    shutil.move(nested, fake_root / "acdc" / "ACDC")
    with pytest.raises(DatasetNotFoundError, match="one level too deep") as e:
        build_dataset("acdc_fog", "val", root=fake_root)
    assert str(fake_root / "acdc" / "ACDC") in str(e.value)


@pytest.mark.sets("mapillary")
def test_layout_mismatch_mapillary_v20_labels_only(fake_root):
    shutil.rmtree(fake_root / "mapillary/validation/v1.2")
    (fake_root / "mapillary/validation/v2.0/labels").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="v2.0") as e:
        build_dataset("mapillary", "val", root=fake_root)
    assert str(fake_root / "mapillary/validation/v1.2/labels") in str(e.value)
    assert len(build_dataset("mapillary", "test", root=fake_root)) == 2  # unlabeled: fine
    shutil.rmtree(fake_root / "mapillary/training")
    shutil.rmtree(fake_root / "mapillary/validation")
    shutil.rmtree(fake_root / "mapillary/testing")
    with pytest.raises(DatasetNotFoundError, match="none of training/, validation/"):
        build_dataset("mapillary", "val", root=fake_root)


@pytest.mark.sets("acdc")
def test_layout_variant_acdc_label_ids_instead_of_train_ids(fake_root):
    for p in (fake_root / "acdc/gt/fog/val").rglob("*_gt_labelTrainIds.png"):
        p.rename(p.with_name(p.name.replace("labelTrainIds", "labelIds")))
    with pytest.raises(DatasetNotFoundError, match="found .*_gt_labelIds.png") as e:
        build_dataset("acdc_fog", "val", root=fake_root)
    assert "2 of 2 images" in str(e.value)


@pytest.mark.sets("bdd100k")
def test_empty_split(fake_root):
    folder = fake_root / "bdd100k/images/10k/val"
    for p in folder.iterdir():
        p.rename(p.with_suffix(".png"))  # wrong suffix: BDD100K images are .jpg
    with pytest.raises(DatasetNotFoundError, match="is empty") as e:
        build_dataset("bdd100k", "val", root=fake_root)
    assert str(folder) in str(e.value) and ".png" in str(e.value)


@pytest.mark.sets("dark_zurich")
def test_image_without_label_in_labeled_split(fake_root):
    lbl = fake_root / "dark_zurich/gt/val/night/GOPR0356/GOPR0356_frame_000322_gt_labelTrainIds.png"
    lbl.unlink()
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset("darkzurich", "val", root=fake_root)
    msg = str(e.value)
    assert "1 of 2 images" in msg and str(lbl) in msg
    assert "GOPR0356_frame_000322_rgb_anon.png" in msg
    # the same image in an unlabeled split is fine
    assert len(build_dataset("darkzurich", "test", root=fake_root)) == 2


# ---------------------------------------------------------------- errors at read / check
@pytest.mark.sets("bdd100k")
def test_label_of_another_size(fake_root):
    lbl = fake_root / "bdd100k/labels/sem_seg/masks/val/7d128593-0ccfea4c.png"
    write_gray(lbl, np.zeros((H, W + 2)))
    ds = build_dataset("bdd100k", "val", root=fake_root)  # opening does not read files
    with pytest.raises(DatasetError, match=f"{W + 2}x{H} .* is {W}x{H}") as e:
        ds[1]
    assert str(lbl) in str(e.value)
    with pytest.raises(DatasetError, match="1 problem"):
        ds.check()


@pytest.mark.sets("cityscapes", "synthia")
def test_corrupted_image_and_label(fake_root):
    img = fake_root / "cityscapes/leftImg8bit/val/bremen/bremen_000000_000020_leftImg8bit.png"
    img.write_bytes(b"\x89PNG not really")
    ds = build_dataset("cityscapes", "val", root=fake_root)
    with pytest.raises(DatasetError, match="cannot read image") as e:
        ds[1]
    assert str(img) in str(e.value)
    syn = fake_root / "synthia/GT/LABELS/0000001.png"
    syn.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cv2.imread") as e:
        build_dataset("synthia", root=fake_root)[1]
    assert str(syn) in str(e.value)


@pytest.mark.sets("acdc")
def test_colour_label_is_rejected(fake_root):
    lbl = fake_root / "acdc/gt/rain/val/GOPR0400/GOPR0400_frame_000041_gt_labelTrainIds.png"
    write_rgb(lbl)
    with pytest.raises(DatasetError, match="mode-RGB"):
        build_dataset("acdc_rain", "val", root=fake_root)[0]


@pytest.mark.sets("acdc")
def test_check_lists_every_problem(fake_root):
    img = fake_root / "acdc/rgb_anon/snow/val/GOPR0122/GOPR0122_frame_000041_rgb_anon.png"
    img.write_bytes(b"")
    lbl = fake_root / "acdc/gt/snow/val/GOPR0122/GOPR0122_frame_000042_gt_labelTrainIds.png"
    write_gray(lbl, np.zeros((H + 1, W)))
    ds = build_dataset("acdc_snow", "val", root=fake_root)
    with pytest.raises(DatasetError) as e:
        ds.check()
    msg = str(e.value)
    assert "2 problem(s)" in msg and str(img) in msg and str(lbl) in msg


def test_check_summary_on_good_data(shared_root):
    summary = build_dataset("cityscapes", "val", root=shared_root).check()
    assert summary.num_images == summary.num_labeled == 2
    assert summary.image_sizes == {(H, W): 2}
    assert summary.class_pixels[0] > 0 and summary.class_pixels[13] > 0
    assert sum(summary.class_pixels) + summary.ignore_pixels == 2 * H * W
    assert "OK" in str(summary)


CS_LABEL = "cityscapes/gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
BDD_LABEL = "bdd100k/labels/sem_seg/masks/val/7d06fefd-f7be05a6.png"
DZ_LABEL = "dark_zurich/gt/val/night/GOPR0356/GOPR0356_frame_000321_gt_labelTrainIds.png"
MAP_LABEL = "mapillary/validation/v1.2/labels/_1Gn_xkw7sa_i9GU4mkxxQ.png"


@pytest.mark.parametrize(
    ("name", "split", "path", "bad"),
    [
        ("cityscapes", "val", CS_LABEL, 40),
        ("gta5", "all", "gta5/labels/00001.png", 34),
        ("bdd100k", "val", BDD_LABEL, 19),
        ("darkzurich", "val", DZ_LABEL, 200),
        ("synthia", "all", "synthia/GT/LABELS/0000000.png", 23),
        ("mapillary", "val", MAP_LABEL, 66),
    ],
)
def test_unknown_label_values(tmp_path, name, split, path, bad):
    fake_root = build_fake_root(tmp_path / "data", (path.split("/")[0],))
    values = stripes((bad, 0, 0))
    if name == "synthia":
        write_synthia_label(fake_root / path, values, np.zeros_like(values))
    elif name in ("gta5", "mapillary"):
        write_palette(fake_root / path, values)
    else:
        write_gray(fake_root / path, values)
    ds = build_dataset(name, split, root=fake_root)
    with pytest.raises(DatasetError, match=rf"values \[{bad}\]") as e:
        ds[0]
    assert str(fake_root / path) in str(e.value) and "strict_labels=False" in str(e.value)
    with pytest.raises(DatasetError, match=str(fake_root / path)):
        ds.check()
    lenient = build_dataset(name, split, root=fake_root, strict_labels=False)
    assert torch.all(lenient[0]["mask"][:, :5] == 255)
    lenient.check()  # not a problem when lenient


@pytest.mark.sets("mapillary")
def test_mapillary_ids_beyond_the_config_names_are_unknown(fake_root):
    names = ["construction--flat--road", "object--vehicle--car"]
    (fake_root / "mapillary/config.json").write_text(
        json.dumps({"labels": [{"name": n} for n in names]})
    )
    ds = build_dataset("mapillary", "val", root=fake_root)
    with pytest.raises(DatasetError, match="Mapillary ids 0..1"):
        ds[0]  # the fixture labels hold ids 13, 55, 65
    (fake_root / "mapillary/config.json").write_text('{"no labels": []}')
    with pytest.raises(DatasetError, match="config.json"):
        build_dataset("mapillary", "val", root=fake_root)


# ---------------------------------------------------------------- CLI
@pytest.mark.sets("cityscapes", "gta5")
def test_cli_check_good_and_broken(fake_root, capsys):
    assert main(["check", "cityscapes", "--split", "val", "--root", str(fake_root), "--quiet"]) == 0
    assert "cityscapes / val" in capsys.readouterr().out
    assert main(["check", "gta5", "--root", str(fake_root), "--quiet"]) == 0
    write_gray(fake_root / "gta5/labels/00002.png", np.zeros((3, 3)))
    assert main(["check", "gta5", "--root", str(fake_root), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "00002.png" in err
    assert main(["check", "cityscape", "--root", str(fake_root)]) == 1
    assert "Did you mean 'cityscapes'" in capsys.readouterr().err
    assert main(["check", "synthia", "--root", str(fake_root / "nope")]) == 1


@pytest.mark.sets("cityscapes", "synthia")
def test_cli_list(fake_root, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REGISTRY) and "train_ref" in out
    shutil.rmtree(fake_root / "synthia")
    assert main(["list", "--root", str(fake_root)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["synthia"].endswith("on disk: -")
    assert lines["cityscapes"].endswith("on disk: train, val, test")
