"""The feature cache: equal to direct features, read back from disk, keyed by everything the
features depend on (weights, prompt, image file), never by an object's id."""

import gc
import os
import shutil

import pytest
import torch

from diffprompt import cache as C
from diffprompt.backbones.diffusion import DiffusionBackbone
from diffprompt.build import build_model
from diffprompt.data import build_dataset
from diffprompt.dg.config import TrainConfig
from diffprompt.io import digest
from diffprompt.probing import features_of
from diffprompt.prompts import SceneText

pytestmark = pytest.mark.usefixtures("one_thread")


def test_feature_cache_equals_direct_features_and_reads_disk(tiny_sd, mini_root, tmp_path):
    m = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="fixed"))
    ds = build_dataset("gta5", "train", mini_root)
    C.FeatureCache(m).get(ds, [0])  # in memory only: a later cache with a folder persists it
    fc = C.FeatureCache(m, tmp_path / "cache")
    got = fc.get(ds, [0, 1, 2])
    with torch.no_grad():
        ref = m.features(torch.stack([ds[i]["image"] for i in (0, 1, 2)]))
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=2e-3, rtol=2e-3)  # stored in fp16
    other = fc.get(ds, [0], SceneText("a photo at night"))
    assert not torch.equal(other["s0"], got["s0"][:1])  # another prompt, another key
    C.MEMORY.clear()
    calls = []
    m.backbone.register_forward_hook(lambda *a: calls.append(1))
    again = C.FeatureCache(m, tmp_path / "cache").get(ds, [0, 1, 2])
    assert not calls  # read from disk
    for k in got:
        assert torch.equal(again[k], got[k])
    trained_adapter = TrainConfig(model=str(tiny_sd), adapter=True, cache_features=False)
    with pytest.raises(ValueError, match="cannot be cached"):
        C.FeatureCache(build_model(trained_adapter))


def test_feature_cache_keys_follow_weights_and_image_files(tiny_sd, mini_root, tmp_path):
    bb = DiffusionBackbone.from_pretrained(tiny_sd)
    key = features_of(bb, "a").cache.backbone_key
    with torch.no_grad():
        next(bb.unet.parameters()).add_(1e-3)
    assert features_of(bb, "b").cache.backbone_key != key  # new weights, new key
    root = tmp_path / "data"
    shutil.copytree(mini_root / "gta5", root / "gta5")
    ds = build_dataset("gta5", "train", root)
    before = C.image_identity(ds, 0)
    path = ds.files[0][0]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the image file changed
    assert C.image_identity(ds, 0) != before
    # the noise seed names the image, not where it lives: equal in another data location
    here = build_dataset("gta5", "train", mini_root)
    assert C.noise_seed(ds, 0, 3) == C.noise_seed(here, 0, 3) != C.noise_seed(here, 1, 3)
    assert C.image_identity(ds, 0)["file"] != C.image_identity(here, 0)["file"]


def test_image_keys_belong_to_their_data_set_object(tiny_sd, mini_root, tmp_path):
    """A data set created after another was garbage-collected often gets its id: its images
    must still get their own keys (the old cache keyed them by id and served stale maps)."""
    root = tmp_path / "data"
    shutil.copytree(mini_root / "gta5", root / "gta5")
    cache = features_of(DiffusionBackbone.from_pretrained(tiny_sd), "a").cache
    for i in range(6):
        ds = build_dataset("gta5", "train", root if i % 2 else mini_root)
        assert cache.image_key(ds, 0) == digest(C.image_identity(ds, 0))
        del ds
        gc.collect()
    assert len(cache._image_keys) == 0  # held weakly: nothing kept for dead data sets


def test_latents_are_cached_once_per_image(tiny_sd, mini_root):
    m = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="fixed"))
    ds = build_dataset("gta5", "train", mini_root)
    C.MEMORY.clear()
    fc = C.FeatureCache(m, None)
    calls = []
    handle = m.backbone.vae.register_forward_pre_hook(lambda *a: calls.append(1))
    first = fc.latents(ds, [0, 1, 2])
    encoded = len(calls)
    again = fc.latents(ds, [2, 0])
    handle.remove()
    assert len(calls) == encoded  # no new encoding
    assert torch.equal(again[0], first[2]) and torch.equal(again[1], first[0])
    with torch.no_grad():
        direct = m.backbone.encode(torch.stack([ds[i]["image"] for i in (0, 1, 2)]))
    torch.testing.assert_close(first, direct.float(), atol=1e-5, rtol=1e-5)


def test_seeds_share_maps_without_noise_and_not_with_it(tiny_sd):
    """The feature config's seed draws the noise only: without noise, models of two seeds
    share one key (their maps are the same); with noise they do not."""
    keys = {}
    for noise in (False, True):
        for seed in (0, 1):
            cfg = TrainConfig(model=str(tiny_sd), prompt_mode="fixed", seed=seed, noise=noise)
            keys[noise, seed] = C.FeatureCache(build_model(cfg)).backbone_key
    assert keys[False, 0] == keys[False, 1]
    assert keys[True, 0] != keys[True, 1]
    assert keys[False, 0] != keys[True, 0]
    other = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="fixed", seed=1))
    ref = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="fixed", seed=0))
    x = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        a, b = ref.features(x), other.features(x)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the seed does not change the maps
