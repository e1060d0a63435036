"""The embedded miniature: determinism, real layouts and formats, domains that differ."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from diffprompt.data import DATASETS, SPLITS, build_dataset
from diffprompt.data import toyworld as tw
from diffprompt.data.toyworld import miniature
from diffprompt.labels import CLASSES


def test_same_seed_same_sample_and_different_seed_differs():
    a_img, a_lab, a_cap, _ = tw.render_sample("cityscapes", (0, 1, 2, 3), 64, 128)
    b_img, b_lab, b_cap, _ = tw.render_sample("cityscapes", (0, 1, 2, 3), 64, 128)
    c_img, _, _, _ = tw.render_sample("cityscapes", (0, 1, 2, 4), 64, 128)
    assert (a_img == b_img).all() and (a_lab == b_lab).all() and a_cap == b_cap
    assert not (a_img == c_img).all()


def test_scenes_cover_the_classes_at_several_scales():
    present = set()
    person_heights = []
    for i in range(40):
        _, lab, _, _ = tw.render_sample("gta5", (0, 0, 0, i))
        present |= set(np.unique(lab).tolist()) - {255}
        rows = np.where((lab == 11).any(1))[0]
        if len(rows):
            person_heights.append(rows.max() - rows.min())
    assert len(present) >= 17, [CLASSES[i] for i in sorted(present)]
    assert max(person_heights) > 3 * max(1, min(person_heights))


def test_caption_names_style_condition_and_objects():
    _, lab, cap, layout = tw.render_sample("acdc_night", (0, 6, 1, 5))
    assert cap.startswith("a photo of a street scene at night")
    if (lab == 13).sum() > 50:
        assert "car" in cap
    _, _, cap, _ = tw.render_sample("gta5", (0, 0, 0, 1))
    assert cap.startswith("a rendered street scene in daylight showing road")
    assert "sky" in cap and ", with " in cap


def _mean_stats(domain, n=8):
    sat, val, ground = [], [], []
    for i in range(n):
        img, lab, _, _ = tw.render_sample(domain, (0, 1, 0, i), 64, 128)
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        sat.append(hsv[..., 1].mean())
        val.append(np.median(hsv[..., 2]))  # exposure: robust to lamps and windows
        ground.append(np.isin(lab, (0, 1)).mean())  # ground share: road and sidewalk
    return np.mean(sat), np.mean(val), np.mean(ground)


def test_domains_differ_as_the_real_ones_do():
    s_gta, _, ground_gta = _mean_stats("gta5")
    s_cs, v_cs, _ = _mean_stats("cityscapes")
    _, _, ground_syn = _mean_stats("synthia")
    _, v_night, _ = _mean_stats("acdc_night")
    s_fog, _, _ = _mean_stats("acdc_fog")
    assert s_gta > 1.3 * s_cs  # saturated synthetic palette
    assert ground_syn > 1.2 * ground_gta  # SYNTHIA looks down from a higher viewpoint
    assert v_night < 0.65 * v_cs  # night: low exposure (median, so lamps do not count)
    assert s_fog < s_cs  # fog washes colours out


def test_fog_attenuates_with_depth():
    rng = np.random.default_rng(0)
    dom = tw.DOMAINS["acdc_fog"]
    cam = tw.sample_camera(rng, dom.camera, 128, 256)
    layout = tw.build_layout(rng, dom, cam)
    img = tw.render_appearance(layout, dom, np.random.default_rng(1)).astype(np.float32)
    sky = layout.label == 10
    airlight = img[sky].mean(0)
    dev = np.abs(img - airlight).mean(-1)
    near = ~sky & (layout.depth < 10)
    far = ~sky & (layout.depth > 40)
    assert dev[near].mean() > 2 * dev[far].mean()


def test_miniature_has_every_name_in_real_layouts(mini_root):
    for name in DATASETS:
        for split in SPLITS[name]:
            try:
                ds = build_dataset(name, split, mini_root)
            except Exception:  # a split the real data set has but the miniature leaves out
                continue
            s = ds[0]
            assert s["image"].shape[0] == 3 and s["image"].dtype.is_floating_point
            assert s["meta"]["caption"]
            if ds.labeled:
                vals = set(s["mask"].unique().tolist())
                assert vals <= set(range(19)) | {255}, (name, split, vals)
    # every registry name opens with its default split or "val"
    for name in DATASETS:
        split = "val" if "val" in SPLITS[name] else None
        ds = build_dataset(name, split, mini_root)
        assert len(ds) >= 1 and ds.labeled
        ds.check()


def test_miniature_label_formats_are_the_real_ones(mini_root):
    gta = next((mini_root / "gta5" / "labels").glob("*.png"))
    assert Image.open(gta).mode == "P"
    syn_label = next((mini_root / "synthia" / "GT" / "LABELS").glob("*.png"))
    syn = cv2.imread(str(syn_label), cv2.IMREAD_UNCHANGED)
    assert syn.dtype == np.uint16 and syn.ndim == 3 and syn.shape[2] == 3
    assert set(np.unique(syn[..., 2]).tolist()) <= set(range(23))
    cs = next((mini_root / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    ids = np.asarray(Image.open(cs))
    assert 1 in ids or 0 in ids or ids.max() <= 33  # ids, not trainIds
    assert set(np.unique(ids).tolist()) <= set(range(34))
    assert list((mini_root / "bdd100k" / "images" / "10k" / "train").glob("*.jpg"))
    assert (mini_root / "mapillary" / "config_v1.2.json").is_file()
    assert list((mini_root / "mapillary" / "validation" / "v1.2" / "labels").glob("*.png"))
    assert not (mini_root / "acdc" / "gt" / "night" / "test").exists()  # withheld, as real
    assert not (mini_root / "dark_zurich" / "gt" / "train").exists()
    caps = json.loads((mini_root / "acdc" / "captions.json").read_text())
    assert any("in fog" in c["caption"] for c in caps.values())


def test_regenerated_when_parameters_change_and_nothing_half_written(tmp_path, monkeypatch):
    cfg = tw.ToyWorldConfig(height=32, width=64, scale=0.01)
    root = tw.ensure_miniature(tmp_path / "m", cfg)
    stamp = json.loads((root / "toyworld.json").read_text())
    assert tw.is_current(root, cfg)
    other = tw.ToyWorldConfig(height=32, width=64, scale=0.01, seed=1)
    assert not tw.is_current(root, other)
    # an interrupted regeneration leaves the old miniature in place and no temporary folder

    def boom(out, cfg=None, **kw):
        out.mkdir(parents=True)
        (out / "half.png").write_bytes(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(miniature, "generate", boom)
    with pytest.raises(KeyboardInterrupt):
        tw.ensure_miniature(root, other)
    assert json.loads((root / "toyworld.json").read_text()) == stamp
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["m"]
    monkeypatch.undo()
    tw.ensure_miniature(root, other)
    assert tw.is_current(root, other)
