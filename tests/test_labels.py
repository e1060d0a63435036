"""Label tables: Cityscapes/GTA5, SYNTHIA and Mapillary ids to the 19 train classes."""

import numpy as np

from diffprompt import labels as L


def test_cityscapes_table_known_ids():
    t = L.CITYSCAPES_ID_TO_TRAINID
    assert (t[7], t[8], t[11], t[23], t[24], t[26], t[33]) == (0, 1, 2, 10, 11, 13, 18)
    for void in (0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 255):
        assert t[void] == L.IGNORE_INDEX


def test_cityscapes_table_is_onto_and_inverse_consistent():
    t = L.CITYSCAPES_ID_TO_TRAINID
    assert sorted(set(t.tolist()) - {255}) == list(range(19))
    assert (t[L.TRAINID_TO_CITYSCAPES_ID] == np.arange(19)).all()


def test_gta5_palette_matches_cityscapes_colours():
    pal = np.array(L.CITYSCAPES_ID_PALETTE).reshape(256, 3)
    for k in range(19):
        assert (pal[L.TRAINID_TO_CITYSCAPES_ID[k]] == L.PALETTE[k]).all()


def test_synthia_sixteen_classes():
    t = L.SYNTHIA_ID_TO_TRAINID
    mapped = set(t.tolist()) - {255}
    assert mapped == set(L.SYNTHIA_EVAL_CLASSES)
    assert len(L.SYNTHIA_EVAL_CLASSES) == 16
    names = [L.CLASSES[i] for i in range(19) if i not in L.SYNTHIA_EVAL_CLASSES]
    assert names == ["terrain", "truck", "train"]
    assert (t[3], t[8], t[10], t[17], t[21]) == (0, 13, 11, 12, 3)


def test_mapillary_mapping_is_by_name():
    lut = L.mapillary_lut()
    road = L.MAPILLARY_V12_NAMES.index("construction--flat--road")
    assert lut[road] == 0
    assert len(L.MAPILLARY_V12_NAMES) == 66
    # every train class is reachable from some Mapillary name
    assert sorted(set(lut.tolist()) - {255}) == list(range(19))
    # a permuted config gives the permuted table
    rng = np.random.default_rng(0)
    perm = rng.permutation(66)
    names = [L.MAPILLARY_V12_NAMES[i] for i in perm]
    assert (L.mapillary_lut(names)[:66] == lut[perm]).all()


def test_colorize_uses_palette_and_black_for_ignore():
    img = L.colorize(np.array([[0, 13, 255]]))
    assert img.shape == (1, 3, 3)
    assert (img[0, 0] == L.PALETTE[0]).all() and (img[0, 1] == L.PALETTE[13]).all()
    assert (img[0, 2] == 0).all()
