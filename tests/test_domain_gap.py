"""The small CNN of the domain-gap check learns a task with a known answer."""

import pytest
import torch
from torch.utils.data import Dataset

from diffprompt.domain_gap import GapConfig, SmallSegNet, evaluate_cnn, gap_checks, train_cnn


class ColourCoded(Dataset):
    """Images whose left half is red (class 0) and right half blue (class 13), or swapped."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        img = torch.zeros(3, 16, 32)
        mask = torch.zeros(16, 32, dtype=torch.long)
        left, right = (0, 13) if i % 2 == 0 else (13, 0)
        for cls, sl in ((left, slice(0, 16)), (right, slice(16, 32))):
            img[0 if cls == 0 else 2, :, sl] = 1.0
            mask[:, sl] = cls
        mask[0, 0] = 255  # an ignored pixel
        return {"image": img, "mask": mask}


def test_smallsegnet_shape():
    out = SmallSegNet()(torch.zeros(2, 3, 64, 128))
    assert out.shape == (2, 19, 64, 128)


def test_cnn_learns_colour_coded_classes():
    cfg = GapConfig(steps=80, batch_size=4, lr=5e-3, width=16)
    model = train_cnn(ColourCoded(8), cfg)
    miou, iou = evaluate_cnn(model, ColourCoded(4), cfg)
    assert miou > 90, iou


def test_gap_checks():
    def rows(night_source, night_own):
        values = {"cityscapes": (30.0, 60.0), "acdc_night": (night_source, night_own)}
        return [
            {"target": t, "source-trained": a, "target-trained": b, "drop": b - a}
            for t, (a, b) in values.items()
        ]

    assert gap_checks(rows(20.0, 55.0)) == {
        "cityscapes_gap": True,
        "adverse_costs_more": True,
        "learnable": True,
    }
    assert gap_checks(rows(35.0, 45.0)) == {
        "cityscapes_gap": True,
        "adverse_costs_more": False,
        "learnable": False,
    }


def test_stored_run_is_reused_only_for_the_same_key(mini_root, tmp_path):
    from diffprompt.experiments.data import load_or_run_domain_gap, record_domain_gap
    from diffprompt.results import Run

    cfg = GapConfig(steps=2, batch_size=2)
    kw = dict(max_images=2, log=None)
    first = load_or_run_domain_gap(mini_root, "gta5", ["cityscapes"], cfg, tmp_path, **kw)
    assert "reused" not in first.attrs
    record_domain_gap(Run("t", {}, root=tmp_path), first, "gta5")
    again = load_or_run_domain_gap(mini_root, "gta5", ["cityscapes"], cfg, tmp_path, **kw)
    assert again.attrs["reused"]["finished_utc"]
    # the stored CSV holds two decimals
    assert again["source-trained"].tolist() == first["source-trained"].round(2).tolist()
    other = GapConfig(steps=3, batch_size=2)
    fresh = load_or_run_domain_gap(mini_root, "gta5", ["cityscapes"], other, tmp_path, **kw)
    assert "reused" not in fresh.attrs
    no_reuse = load_or_run_domain_gap(
        mini_root, "gta5", ["cityscapes"], cfg, tmp_path, reuse=False, **kw
    )
    assert "reused" not in no_reuse.attrs
    # the same seed on the same machine gives the same numbers
    assert no_reuse["source-trained"].tolist() == pytest.approx(first["source-trained"].tolist())
