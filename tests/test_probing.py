"""Feature probing: CKA, MMD, the linear probe on a known answer, map selection, augmentation."""

import pytest
import torch

from diffprompt.backbones.comparators import FeatureBackbone
from diffprompt.backbones.diffusion import DiffusionBackbone
from diffprompt.data.transforms import PhotometricAugment
from diffprompt.experiments.probing import real_backbone
from diffprompt.probing import (
    LinearProbe,
    ProbeConfig,
    features_of,
    fit_probe,
    linear_cka,
    mmd,
    probe_backbone,
    probe_sets,
    score_probe,
    select_maps,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cka_of_a_set_with_itself_and_an_orthogonal_transform_is_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, 3.0 * x + 1.0) == pytest.approx(1.0, abs=1e-9)  # scale, shift
    assert linear_cka(x, torch.randn(200, 16, generator=g)) < 0.2  # unrelated features


def test_mmd_separates_distributions():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(300, 4, generator=g), torch.randn(300, 4, generator=g)
    assert abs(mmd(a, b)) < 0.01
    assert mmd(a, b + 2.0) > 0.2
    assert mmd(a, b + 2.0, bandwidth=1.0) > mmd(a, b + 0.5, bandwidth=1.0)


def test_select_maps():
    feats = {"s0": 0, "s1": 0, "a1": 0, "s2": 0}
    assert select_maps(feats, "s") == ["s0", "s1", "s2"]
    assert select_maps(feats, "sa") == ["a1", "s0", "s1", "s2"]
    assert select_maps(feats, "s1") == ["s1"] and select_maps(feats, "s0+a1") == ["s0", "a1"]
    with pytest.raises(ValueError, match="matches"):
        select_maps({"s0": 0}, "a")
    with pytest.raises(ValueError, match="not among"):
        select_maps(feats, "s0+s9")


class _OneHotFeatures:
    """Maps that are the labels themselves (one-hot at stride 2): a probe must reach 100."""

    name = "one-hot"

    def get(self, dataset, idx):
        y = torch.stack([dataset[i]["mask"] for i in idx])
        y = torch.where(y == 255, 19, y)
        oh = torch.nn.functional.one_hot(y, 20).permute(0, 3, 1, 2).float()
        return {"s0": oh[..., ::2, ::2]}


class _Labeled:
    def __init__(self, n=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            m = torch.zeros(16, 32, dtype=torch.long)
            m[:, 16:] = int(torch.randint(1, 19, (1,), generator=g))
            m[8:, :8] = 13
            self.items.append({"image": torch.rand(3, 16, 32, generator=g), "mask": m})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def masks(self, idx):
        return torch.stack([self.items[i]["mask"] for i in idx])


def test_linear_probe_reaches_a_known_answer():
    ds = _Labeled()
    cfg = ProbeConfig(n_train=6, steps=150, lr=0.05, stride=2, batch_size=4)
    probe, names = fit_probe(_OneHotFeatures(), ds, cfg)
    assert isinstance(probe, LinearProbe) and names == ["s0"]
    assert score_probe(probe, names, _OneHotFeatures(), ds, 6, 2, "gta5") == pytest.approx(100.0)
    untrained = LinearProbe(20)
    assert score_probe(untrained, names, _OneHotFeatures(), ds, 6, 2, "gta5") < 100.0


def test_photometric_augment_is_seeded_and_in_range():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    aug = PhotometricAugment()
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x)


def test_real_backbones_by_folder_join_the_probe(tiny_sd, mini_root, tmp_path):
    import transformers as T

    torch.manual_seed(0)
    cfg = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])
    T.ResNetForImageClassification(cfg).save_pretrained(tmp_path / "resnet")
    resnet = real_backbone(str(tmp_path / "resnet"), device="cpu")
    sd = real_backbone(str(tiny_sd), device="cpu")
    assert isinstance(resnet, FeatureBackbone) and isinstance(sd, DiffusionBackbone)
    pcfg = ProbeConfig(
        data_root=str(mini_root), targets=("cityscapes",), n_train=2, n_eval=2, steps=2
    )
    sets = probe_sets(pcfg)
    for bb in (resnet, sd):
        r = probe_backbone(features_of(bb, "b", tmp_path / "cache"), sets, pcfg)
        assert set(r) == {"source", "cityscapes", "target mean", "drop"}
