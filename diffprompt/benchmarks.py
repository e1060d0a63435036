"""The paper's benchmarks as data, and the one rule for which classes an mIoU averages over.

Four benchmarks (shared/PAPER.md): GTA5 -> Cityscapes / BDD100K / Mapillary and
SYNTHIA -> Cityscapes (synthetic to real), Cityscapes -> ACDC fog / night / rain / snow and
Cityscapes -> Dark Zurich (clear to adverse weather). Every module that names a target, a
group of targets or a target's hand-written prompt takes it from here, and every mIoU (the
DG log and tables, the probes, TTA, the embedded model's evidence) averages over
:func:`eval_classes`.
"""

from __future__ import annotations

from collections.abc import Sequence

from diffprompt.io import did_you_mean
from diffprompt.labels import SYNTHIA_EVAL_CLASSES

#: Every target of the benchmarks, in table order.
TARGETS: tuple[str, ...] = (
    "cityscapes",
    "bdd100k",
    "mapillary",
    "acdc_fog",
    "acdc_night",
    "acdc_rain",
    "acdc_snow",
    "darkzurich",
)

#: Named groups of targets: ``adverse`` is the paper's clear-to-adverse benchmark.
GROUPS: dict[str, tuple[str, ...]] = {
    "adverse": ("acdc_fog", "acdc_night", "acdc_rain", "acdc_snow", "darkzurich"),
}

#: Each source and the targets of its benchmark (T2: GTA5 and SYNTHIA; T4: Cityscapes).
BENCHMARKS: dict[str, tuple[str, ...]] = {
    "gta5": ("cityscapes", "bdd100k", "mapillary"),
    "synthia": ("cityscapes",),
    "cityscapes": GROUPS["adverse"],
}

#: Hand-written descriptions of each target (the zero-shot prompting baseline; ours).
TARGET_PROMPTS: dict[str, str] = {
    "acdc_fog": "a photo of an urban street scene in fog",
    "acdc_night": "a photo of an urban street scene at night",
    "acdc_rain": "a photo of an urban street scene in the rain",
    "acdc_snow": "a photo of an urban street scene in snow",
    "darkzurich": "a dashcam photo of an urban street scene at night",
    "cityscapes": "a photo of a city street in daylight under an overcast sky",
    "bdd100k": "a dashcam photo of a street taken from a car",
    "mapillary": "a photo of a street seen from the sidewalk",
}


def eval_classes(source: str, dataset=None) -> tuple[int, ...] | None:
    """Return the trainIds an mIoU averages over when a model trained on ``source`` is
    scored on ``dataset``: SYNTHIA's 16 classes whenever SYNTHIA is the source (the
    SYNTHIA -> Cityscapes protocol: the model never saw terrain, truck and train), else the
    data set's own ``eval_classes`` (SYNTHIA's 16 on SYNTHIA, all 19 elsewhere; None, all,
    for a data set without the attribute)."""
    if source == "synthia":
        return SYNTHIA_EVAL_CLASSES
    return getattr(dataset, "eval_classes", None)


def resolve_targets(target: str | Sequence[str]) -> list[str]:
    """Return the targets a name stands for, in order and without repeats: ``"all"`` is
    every target of :data:`TARGETS`, a group name (:data:`GROUPS`) its targets, a target
    itself; a list is resolved item by item. An unknown name is a ValueError listing the
    choices."""
    names = [target] if isinstance(target, str) else list(target)
    out: list[str] = []
    for name in names:
        if name == "all":
            out += TARGETS
        elif name in GROUPS:
            out += GROUPS[name]
        elif name in TARGETS:
            out.append(name)
        else:
            raise ValueError(
                f"unknown target {name!r}; valid targets: {list(TARGETS)}, 'all' or "
                f"{sorted(GROUPS)}.{did_you_mean(name, [*TARGETS, *GROUPS, 'all'])}"
            )
    return list(dict.fromkeys(out))
