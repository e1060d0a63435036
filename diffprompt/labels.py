"""Label spaces: the 19 Cityscapes train classes and the tables that map each data set's
label ids to them.

Every loader returns trainIds in ``0..18`` with ``IGNORE_INDEX`` (255) for pixels that are
not evaluated. Mapping is a lookup table: ``trainids = table[ids]``.

Sources:
  * Cityscapes ids/trainIds/colours: cityscapesScripts ``helpers/labels.py``.
  * GTA5 (Richter et al. 2016): label PNGs are palette images whose indices are Cityscapes ids.
  * SYNTHIA-RAND-CITYSCAPES: ids from the SYNTHIA README; 16 evaluated classes as in the
    DG/UDA literature (no terrain, truck, train).
  * Mapillary Vistas v1.2: 66 classes; our name-based mapping to Cityscapes is below
    (``MAPILLARY_TO_CITYSCAPES``) and documented in data/README.md.
  * BDD100K, ACDC, Dark Zurich: labels are trainIds already.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
NUM_CLASSES = 19

# (id, name, trainId, colour) of every Cityscapes label id (cityscapesScripts).
CITYSCAPES_LABELS: tuple[tuple[int, str, int, tuple[int, int, int]], ...] = (
    (0, "unlabeled", 255, (0, 0, 0)),
    (1, "ego vehicle", 255, (0, 0, 0)),
    (2, "rectification border", 255, (0, 0, 0)),
    (3, "out of roi", 255, (0, 0, 0)),
    (4, "static", 255, (0, 0, 0)),
    (5, "dynamic", 255, (111, 74, 0)),
    (6, "ground", 255, (81, 0, 81)),
    (7, "road", 0, (128, 64, 128)),
    (8, "sidewalk", 1, (244, 35, 232)),
    (9, "parking", 255, (250, 170, 160)),
    (10, "rail track", 255, (230, 150, 140)),
    (11, "building", 2, (70, 70, 70)),
    (12, "wall", 3, (102, 102, 156)),
    (13, "fence", 4, (190, 153, 153)),
    (14, "guard rail", 255, (180, 165, 180)),
    (15, "bridge", 255, (150, 100, 100)),
    (16, "tunnel", 255, (150, 120, 90)),
    (17, "pole", 5, (153, 153, 153)),
    (18, "polegroup", 255, (153, 153, 153)),
    (19, "traffic light", 6, (250, 170, 30)),
    (20, "traffic sign", 7, (220, 220, 0)),
    (21, "vegetation", 8, (107, 142, 35)),
    (22, "terrain", 9, (152, 251, 152)),
    (23, "sky", 10, (70, 130, 180)),
    (24, "person", 11, (220, 20, 60)),
    (25, "rider", 12, (255, 0, 0)),
    (26, "car", 13, (0, 0, 142)),
    (27, "truck", 14, (0, 0, 70)),
    (28, "bus", 15, (0, 60, 100)),
    (29, "caravan", 255, (0, 0, 90)),
    (30, "trailer", 255, (0, 0, 110)),
    (31, "train", 16, (0, 80, 100)),
    (32, "motorcycle", 17, (0, 0, 230)),
    (33, "bicycle", 18, (119, 11, 32)),
)

#: The 19 Cityscapes train classes, in trainId order, and the official colour of each
#: ((19, 3) uint8), read off the table above.
_TRAIN_LABELS = sorted((t, name, colour) for _, name, t, colour in CITYSCAPES_LABELS if t != 255)
CLASSES: tuple[str, ...] = tuple(name for _, name, _ in _TRAIN_LABELS)
PALETTE = np.array([colour for _, _, colour in _TRAIN_LABELS], dtype=np.uint8)

#: trainIds evaluated on SYNTHIA (16 classes: all but terrain, truck and train).
SYNTHIA_EVAL_CLASSES: tuple[int, ...] = tuple(
    i for i, c in enumerate(CLASSES) if c not in ("terrain", "truck", "train")
)


# SYNTHIA-RAND-CITYSCAPES class ids (SYNTHIA README) and their trainIds.
SYNTHIA_LABELS: tuple[tuple[int, str, int], ...] = (
    (0, "void", 255),
    (1, "sky", 10),
    (2, "building", 2),
    (3, "road", 0),
    (4, "sidewalk", 1),
    (5, "fence", 4),
    (6, "vegetation", 8),
    (7, "pole", 5),
    (8, "car", 13),
    (9, "traffic sign", 7),
    (10, "pedestrian", 11),
    (11, "bicycle", 18),
    (12, "motorcycle", 17),
    (13, "parking-slot", 255),
    (14, "road-work", 255),
    (15, "traffic light", 6),
    (16, "terrain", 255),  # evaluated as void: the 16-class protocol has no terrain
    (17, "rider", 12),
    (18, "truck", 255),  # no truck in the 16-class protocol
    (19, "bus", 15),
    (20, "train", 255),  # no train in the 16-class protocol
    (21, "wall", 3),
    (22, "lanemarking", 255),  # void, as in the DG/UDA literature's SYNTHIA tables
)

#: Mapillary Vistas v1.2 class names in label-id order (``config.json``, 66 classes).
MAPILLARY_V12_NAMES: tuple[str, ...] = (
    "animal--bird",
    "animal--ground-animal",
    "construction--barrier--curb",
    "construction--barrier--fence",
    "construction--barrier--guard-rail",
    "construction--barrier--other-barrier",
    "construction--barrier--wall",
    "construction--flat--bike-lane",
    "construction--flat--crosswalk-plain",
    "construction--flat--curb-cut",
    "construction--flat--parking",
    "construction--flat--pedestrian-area",
    "construction--flat--rail-track",
    "construction--flat--road",
    "construction--flat--service-lane",
    "construction--flat--sidewalk",
    "construction--structure--bridge",
    "construction--structure--building",
    "construction--structure--tunnel",
    "human--person",
    "human--rider--bicyclist",
    "human--rider--motorcyclist",
    "human--rider--other-rider",
    "marking--crosswalk-zebra",
    "marking--general",
    "nature--mountain",
    "nature--sand",
    "nature--sky",
    "nature--snow",
    "nature--terrain",
    "nature--vegetation",
    "nature--water",
    "object--banner",
    "object--bench",
    "object--bike-rack",
    "object--billboard",
    "object--catch-basin",
    "object--cctv-camera",
    "object--fire-hydrant",
    "object--junction-box",
    "object--mailbox",
    "object--manhole",
    "object--phone-booth",
    "object--pothole",
    "object--street-light",
    "object--support--pole",
    "object--support--traffic-sign-frame",
    "object--support--utility-pole",
    "object--traffic-light",
    "object--traffic-sign--back",
    "object--traffic-sign--front",
    "object--trash-can",
    "object--vehicle--bicycle",
    "object--vehicle--boat",
    "object--vehicle--bus",
    "object--vehicle--car",
    "object--vehicle--caravan",
    "object--vehicle--motorcycle",
    "object--vehicle--on-rails",
    "object--vehicle--other-vehicle",
    "object--vehicle--trailer",
    "object--vehicle--truck",
    "object--vehicle--wheeled-slow",
    "void--car-mount",
    "void--ego-vehicle",
    "void--unlabeled",
)

#: Our name-based Mapillary -> Cityscapes mapping. Names not listed map to 255. It follows
#: the Cityscapes annotation rules: road markings, manholes and plain crosswalks are road;
#: curbs and pedestrian areas are sidewalk; sign frames, utility poles and street-light
#: poles are pole; parking, rail track, guard rail, caravan and trailer are void in
#: Cityscapes and stay 255 here; only the front of traffic signs is a traffic sign.
MAPILLARY_TO_CITYSCAPES: dict[str, str] = {
    "construction--flat--road": "road",
    "construction--flat--bike-lane": "road",
    "construction--flat--crosswalk-plain": "road",
    "construction--flat--service-lane": "road",
    "marking--crosswalk-zebra": "road",
    "marking--general": "road",
    "object--manhole": "road",
    "object--catch-basin": "road",
    "object--pothole": "road",
    "construction--flat--sidewalk": "sidewalk",
    "construction--flat--pedestrian-area": "sidewalk",
    "construction--flat--curb-cut": "sidewalk",
    "construction--barrier--curb": "sidewalk",
    "construction--structure--building": "building",
    "construction--barrier--wall": "wall",
    "construction--barrier--fence": "fence",
    "object--support--pole": "pole",
    "object--support--utility-pole": "pole",
    "object--support--traffic-sign-frame": "pole",
    "object--street-light": "pole",
    "object--traffic-light": "traffic light",
    "object--traffic-sign--front": "traffic sign",
    "nature--vegetation": "vegetation",
    "nature--terrain": "terrain",
    "nature--sand": "terrain",
    "nature--sky": "sky",
    "human--person": "person",
    "human--rider--bicyclist": "rider",
    "human--rider--motorcyclist": "rider",
    "human--rider--other-rider": "rider",
    "object--vehicle--car": "car",
    "object--vehicle--truck": "truck",
    "object--vehicle--bus": "bus",
    "object--vehicle--on-rails": "train",
    "object--vehicle--motorcycle": "motorcycle",
    "object--vehicle--bicycle": "bicycle",
}


def _lut(pairs: dict[int, int], size: int = 256) -> np.ndarray:
    lut = np.full(size, IGNORE_INDEX, dtype=np.uint8)
    for k, v in pairs.items():
        lut[k] = v
    return lut


#: Cityscapes (and GTA5) label id -> trainId, a (256,) uint8 lookup table.
CITYSCAPES_ID_TO_TRAINID = _lut({i: t for i, _, t, _ in CITYSCAPES_LABELS})
GTA5_ID_TO_TRAINID = CITYSCAPES_ID_TO_TRAINID
#: SYNTHIA class id -> trainId, a (65536,) uint8 table (labels are 16-bit).
SYNTHIA_ID_TO_TRAINID = _lut({i: t for i, _, t in SYNTHIA_LABELS}, size=65536)
#: Cityscapes label-id palette (768 ints), as used by GTA5's palette label PNGs.
CITYSCAPES_ID_PALETTE: list[int] = [0] * 768
for _id, _, _, _c in CITYSCAPES_LABELS:
    CITYSCAPES_ID_PALETTE[3 * _id : 3 * _id + 3] = list(_c)
#: trainId -> a representative Cityscapes label id (inverse of the table on its image).
TRAINID_TO_CITYSCAPES_ID = np.array(
    [next(i for i, _, t, _ in CITYSCAPES_LABELS if t == k) for k in range(NUM_CLASSES)],
    dtype=np.uint8,
)


def mapillary_lut(names: tuple[str, ...] | list[str] = MAPILLARY_V12_NAMES) -> np.ndarray:
    """Return the (256,) uint8 Mapillary-id -> trainId table for the given id-ordered names.

    Passing the names read from a data set's own ``config.json`` makes the mapping follow
    that file's order (the mapping is by name, not by position).
    """
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for i, name in enumerate(names):
        target = MAPILLARY_TO_CITYSCAPES.get(name)
        if target is not None:
            lut[i] = CLASSES.index(target)
    return lut


MAPILLARY_ID_TO_TRAINID = mapillary_lut()


def colorize(trainids: np.ndarray) -> np.ndarray:
    """Return an (H, W, 3) uint8 colour image of an (H, W) trainId map (255 -> black)."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:NUM_CLASSES] = PALETTE
    return lut[np.asarray(trainids, dtype=np.uint8)]
