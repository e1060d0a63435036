"""The supervised variant of the embedded UNet: trained on labels, stored, read back."""

import pytest
import torch
from conftest import random_context as _context
from conftest import random_images as _images
from conftest import tiny_sd_parts as _parts

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.backbones.variants import load_variant, save_unet
from diffprompt.supervised import SupervisedConfig, train_supervised

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bb(tmp_path_factory):
    vae, unet, text, tok, sched = _parts(tmp_path_factory.mktemp("v"))
    cfg = FeatureConfig(blocks=(1, 2))
    return DiffusionBackbone(vae, unet, text, tok, sched, cfg, origin="tiny")


class _Labeled(torch.utils.data.Dataset):
    """Images whose label is 0 left of the middle and 1 right of it."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        x = torch.rand(3, 32, 64, generator=g) * 0.2
        x[0, :, 32:] += 0.8  # the right half is red
        y = torch.zeros(32, 64, dtype=torch.long)
        y[:, 32:] = 1
        return {"image": x, "mask": y}


def test_supervised_variant_learns_and_round_trips(bb, tmp_path):
    sup, rec = train_supervised(bb, _Labeled(), SupervisedConfig(steps=25, batch_size=2, lr=3e-3))
    assert sum(rec["losses"][-5:]) < sum(rec["losses"][:5])  # it learned
    assert not any(p.requires_grad for p in sup.unet.parameters())
    assert sup.origin == "tiny (UNet supervised)"
    assert all(p.grad is None for p in bb.unet.parameters())  # the pretrained one untouched
    save_unet(sup, tmp_path / "unet")
    again = load_variant(bb, "supervised", tmp_path / "unet")
    with torch.no_grad():
        f, g = sup(_images(), _context()), again(_images(), _context())
    for k in f:
        torch.testing.assert_close(f[k], g[k])
    assert again.origin == "tiny (UNet supervised)"
    assert load_variant(bb, "pretrained") is bb
    with pytest.raises(FileNotFoundError, match="save_unet"):
        load_variant(bb, "supervised", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown variant"):
        load_variant(bb, "imagenet")


def test_photometric_augmentation_is_named_in_the_origin(bb):
    cfg = SupervisedConfig(steps=1, batch_size=2, photometric=True)
    sup, rec = train_supervised(bb, _Labeled(), cfg)
    assert sup.origin == "tiny (UNet supervised, photometric augmentation)"
    assert rec["recipe"]["photometric"] is True and len(rec["losses"]) == 1
