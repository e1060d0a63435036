"""The embedded model's evidence on a tiny random-weight model: the one rule for mIoU
classes, class-word maps, the probe and the evidence tables."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_sd_parts

from diffprompt.backbones.diffusion import DiffusionBackbone
from diffprompt.backbones.tokenizer import caption_words
from diffprompt.labels import CLASSES, SYNTHIA_EVAL_CLASSES
from diffprompt.toysd import eval as toysd_eval
from diffprompt.toysd.eval import (
    CLASS_WORDS,
    TABLES,
    class_prompt,
    class_word_attention,
    class_word_maps,
    probe,
    write_table,
)

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 16, 32  # multiples of the tiny backbone's 8


@pytest.fixture(scope="module")
def bb(tmp_path_factory):
    """A tiny random-weight backbone whose tokenizer holds every word of the class prompt."""
    words = caption_words([class_prompt()])
    parts = tiny_sd_parts(tmp_path_factory.mktemp("eval"), words=words, max_length=48)
    return DiffusionBackbone(*parts, origin="tiny")


class _Labeled(torch.utils.data.Dataset):
    """Captioned images, labeled road (left) and car (right); mIoU over ``eval_classes``."""

    eval_classes = (13,)  # car only: not what SYNTHIA's rule or all 19 classes would give

    def __len__(self):
        return 3

    def __getitem__(self, i):
        x = torch.rand(3, H, W, generator=torch.Generator().manual_seed(i))
        y = torch.zeros(H, W, dtype=torch.long)
        y[:, W // 2 :] = 13
        return {"image": x, "mask": y, "meta": {"caption": "a street scene with a car"}}


def _spy_on_eval_classes(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    rule = toysd_eval.eval_classes

    def spy(source, dataset=None):
        calls.append((source, dataset))
        return rule(source, dataset)

    monkeypatch.setattr(toysd_eval, "eval_classes", spy)
    return calls


def test_class_word_maps_are_one_map_per_class_at_image_resolution(bb):
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    maps = class_word_maps(bb, x)
    assert maps.shape == (2, len(CLASS_WORDS), H, W) and torch.isfinite(maps).all()
    assert bb.cfg.attention_tokens == 0  # the backbone's own config is back in place
    noisy = class_word_maps(bb, x, timestep=200, noise=True, seed=1)
    assert not torch.equal(noisy, maps)


def test_attention_miou_averages_over_the_eval_classes_of_its_source(bb, monkeypatch):
    calls = _spy_on_eval_classes(monkeypatch)
    ds = _Labeled()
    att = class_word_attention(bb, ds, "gta5", n_images=3, batch=2, timesteps=(1,))
    assert calls == [("gta5", ds)]
    iou = att.loc[1, list(CLASSES)].to_numpy(dtype=float)
    assert att.loc[1, "mIoU"] == pytest.approx(iou[13])  # the data set's own eval_classes
    syn = class_word_attention(bb, ds, "synthia", n_images=3, batch=2, timesteps=(1,))
    expected = np.nanmean(
        syn.loc[1, list(CLASSES)].to_numpy(dtype=float)[list(SYNTHIA_EVAL_CLASSES)]
    )
    assert syn.loc[1, "mIoU"] == pytest.approx(expected)  # SYNTHIA as source: its 16 classes


def test_probe_scores_over_the_eval_classes_of_its_source(bb, monkeypatch):
    calls = _spy_on_eval_classes(monkeypatch)
    train, val = _Labeled(), _Labeled()
    ctx = torch.zeros(1, bb.tokenizer.model_max_length, bb.context_dim)
    kw = dict(n_train=2, n_eval=2, steps=2, stride=4, seed=0)
    miou = probe(bb, train, val, ctx, "gta5", **kw)
    assert calls == [("gta5", val)]
    assert 0 <= miou <= 100 and math.isfinite(miou)
    assert probe(bb, train, val, ctx, "gta5", **kw) == miou  # seeded


class _Run:
    def __init__(self):
        self.calls = []

    def table(self, df, name, float_format="%.2f", caption=None):
        self.calls.append((df, name, float_format, caption))


def test_write_table_writes_with_the_tables_format_and_caption():
    run = _Run()
    df = pd.DataFrame({"mIoU": [1.0]})
    assert write_table(run, "toy_sd_probe", df) is df
    assert run.calls == [(df, "toy_sd_probe", *TABLES["toy_sd_probe"])]
    with pytest.raises(KeyError):
        write_table(run, "toy_sd_unknown", df)
