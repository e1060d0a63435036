"""A DG run's data, opened and checked in one place: the source split and its first images,
the evaluation sets, the training curve's set, the captions."""

import dataclasses

import pytest

from diffprompt.captions import CaptionError
from diffprompt.dg.config import TrainConfig
from diffprompt.dg.data import open_run_data


def _cfg(mini_root, **over) -> TrainConfig:
    base = dict(data_root=str(mini_root), targets=("acdc_night",), prompt_mode="fixed")
    return TrainConfig(**{**base, **over})


def test_the_source_the_evaluation_sets_and_their_counts(mini_root):
    data = open_run_data(_cfg(mini_root, max_train_images=3, max_eval_images=2))
    assert data.train_indices == [0, 1, 2] and data.source.split == "train"
    assert list(data.eval_sets) == ["gta5 (source val)", "acdc_night"]
    night = data.eval_sets["acdc_night"]
    assert data.eval_count(night) == min(2, len(night)) and night.split == "val"
    assert data.curve is None and data.captions is None  # no eval_every, no caption mode
    assert list(open_run_data(_cfg(mini_root, eval_source=False)).eval_sets) == ["acdc_night"]
    everything = open_run_data(_cfg(mini_root))
    assert len(everything.train_indices) == len(everything.source)
    assert everything.eval_count(night) == len(night)


def test_the_curve_is_the_source_val_split_or_the_held_out_source_images(mini_root):
    gta = open_run_data(_cfg(mini_root, eval_every=5))
    val = gta.eval_sets["gta5 (source val)"]
    assert gta.curve.name == "gta5 val" and gta.curve.indices == list(range(len(val)))
    assert gta.curve.dataset is val  # one object per split
    cfg = _cfg(mini_root, source="synthia", eval_every=5, max_train_images=2)
    synthia = open_run_data(cfg)  # SYNTHIA has no val split: images after those trained on
    assert synthia.curve.name == "synthia held-out" and len(synthia.source) > 3
    assert synthia.curve.indices == list(range(2, len(synthia.source)))
    first = open_run_data(dataclasses.replace(cfg, curve_images=1))
    assert first.curve.indices == [2]
    assert open_run_data(_cfg(mini_root, source="synthia", eval_every=5)).curve is None


def test_a_caption_mode_checks_its_captions_before_any_work(mini_root, tmp_path):
    data = open_run_data(_cfg(mini_root, prompt_mode="caption"))
    assert data.captions is not None
    assert data.captions.caption(data.source, 0)  # the miniature captions every image
    with pytest.raises(CaptionError, match="has no caption"):
        open_run_data(
            _cfg(
                mini_root,
                prompt_mode="caption",
                caption_source="file",
                captions_file=str(_empty(tmp_path)),
            )
        )


def _empty(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text('{"someone else": "a photo"}')
    return path
