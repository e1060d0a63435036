"""The benchmarks as data, and the one rule for which classes an mIoU averages over."""

import pytest

from diffprompt.benchmarks import (
    BENCHMARKS,
    GROUPS,
    TARGET_PROMPTS,
    TARGETS,
    eval_classes,
    resolve_targets,
)
from diffprompt.data import DATASETS, build_dataset
from diffprompt.labels import SYNTHIA_EVAL_CLASSES


def test_every_target_is_a_data_set_with_a_prompt_and_groups_are_targets():
    assert set(TARGETS) <= set(DATASETS)
    assert set(TARGET_PROMPTS) == set(TARGETS)
    for group in [*GROUPS.values(), *BENCHMARKS.values()]:
        assert set(group) <= set(TARGETS)
    assert set(BENCHMARKS) <= set(DATASETS)


def test_resolve_targets():
    assert resolve_targets("all") == list(TARGETS)
    assert resolve_targets("adverse") == list(GROUPS["adverse"])
    assert resolve_targets(["acdc_night", "adverse", "cityscapes"])[:2] == [
        "acdc_night",
        "acdc_fog",
    ]
    assert resolve_targets(["cityscapes", "cityscapes"]) == ["cityscapes"]
    with pytest.raises(ValueError, match="Did you mean 'acdc_night'"):
        resolve_targets("acdc_nite")


def test_synthia_as_source_averages_its_16_classes_on_every_data_set(fake_root):
    cityscapes = build_dataset("cityscapes", "val", fake_root)
    synthia = build_dataset("synthia", "all", fake_root)
    assert eval_classes("synthia", cityscapes) == SYNTHIA_EVAL_CLASSES
    assert len(SYNTHIA_EVAL_CLASSES) == 16
    assert eval_classes("gta5", cityscapes) == tuple(range(19))
    assert eval_classes("gta5", synthia) == SYNTHIA_EVAL_CLASSES  # the data set's own
    assert eval_classes("gta5", object()) is None  # no attribute: all classes
