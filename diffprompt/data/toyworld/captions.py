"""Captions: every picture is described by its rendering style, its condition, the stuff
classes it shows and its objects, e.g. "a rendered street scene in daylight showing road,
building, vegetation, sky and sidewalk, with trees, two cars and a person".

Stuff is named by its Cityscapes class name, so that the class names of category prompts
occur in the captions the embedded model is pretrained on.
"""

from __future__ import annotations

import numpy as np

from diffprompt import labels as L
from diffprompt.data.toyworld.domains import CONDITION_WORDS, Domain
from diffprompt.data.toyworld.world import (
    BUILDING,
    FENCE,
    POLE,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    VEG,
    WALL,
    Layout,
)

_NUMBER = {1: "a", 2: "two", 3: "three", 4: "four", 5: "five"}
_PLURAL = {
    "person": "people",
    "bus": "buses",
    "tree": "trees",
    "traffic light": "traffic lights",
    "traffic sign": "traffic signs",
    "rider": "riders",
    "bicycle": "bicycles",
    "motorcycle": "motorcycles",
    "car": "cars",
    "truck": "trucks",
    "train": "trains",
    "pole": "poles",
}

#: Stuff classes a caption names when they cover at least this share of the picture
#: (by Cityscapes class name, largest first; at most ``max_stuff`` of them).
_STUFF_SHARE = {
    ROAD: 0.01,
    SIDEWALK: 0.01,
    BUILDING: 0.01,
    WALL: 0.005,
    FENCE: 0.005,
    POLE: 0.003,
    VEG: 0.01,
    TERRAIN: 0.01,
    SKY: 0.01,
}


def _enumerate(words: list[str]) -> str:
    """Return "a", "a and b" or "a, b and c"."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _visible_stuff(layout: Layout, max_stuff: int) -> list[str]:
    """Return the class names of the stuff covering enough of the picture, largest first."""
    lab = layout.label
    share = np.bincount(lab.ravel(), minlength=256)[: len(L.CLASSES)] / lab.size
    stuff = sorted((c for c, t in _STUFF_SHARE.items() if share[c] >= t), key=lambda c: -share[c])
    return [L.CLASSES[c] for c in stuff[:max_stuff]]


def _visible_objects(layout: Layout, min_area: int, max_items: int) -> list[str]:
    """Return phrases for the object kinds in view, largest total area first: "a car",
    "two people", "trees" (an instance counts with at least ``min_area`` pixels)."""
    parts = layout.parts
    area = np.bincount(layout.part.ravel(), minlength=len(parts))
    per_kind: dict[str, dict[int, int]] = {}  # kind -> instance -> visible pixels
    for i, p in enumerate(parts):
        if p.kind and area[i] > 0:
            per_kind.setdefault(p.kind, {}).setdefault(p.instance, 0)
            per_kind[p.kind][p.instance] += int(area[i])
    items = []
    for kind, inst in per_kind.items():
        n = sum(1 for a in inst.values() if a >= min_area)
        if n and kind != "pole":
            items.append((sum(inst.values()), kind, n))
    items.sort(reverse=True)
    words = []
    for _, kind, n in items[:max_items]:
        if kind == "tree":
            words.append("trees" if n > 1 else "a tree")
        elif n == 1:
            words.append(("an " if kind[0] in "aeiou" else "a ") + kind)
        else:
            words.append(f"{_NUMBER.get(n, 'many')} {_PLURAL[kind]}")
    return words


def caption_for(
    layout: Layout, domain: Domain, min_area: int = 12, max_items: int = 5, max_stuff: int = 6
) -> str:
    """Return a caption naming style, condition, the visible stuff and the objects of a layout.

    E.g. "a photo of a street scene at night showing road, building, sky and sidewalk, with
    two cars and a person".
    """
    stuff = _visible_stuff(layout, max_stuff)
    objects = _visible_objects(layout, min_area, max_items)
    text = f"{domain.style_words} {CONDITION_WORDS[domain.condition]}"
    if stuff:
        text += " showing " + _enumerate(stuff)
    if objects:
        text += ", with " + _enumerate(objects)
    return text
