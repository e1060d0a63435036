"""Cached features do not depend on what shared their batch or on which run computed them
first: a run with a cold cache and one whose cache another run warmed in other batches give
the same numbers, bit for bit."""

import dataclasses

import pytest
import torch

from diffprompt import cache as C
from diffprompt.build import build_model
from diffprompt.data import build_dataset
from diffprompt.dg.config import TrainConfig
from diffprompt.dg.data import open_run_data
from diffprompt.dg.runs import train_dg
from diffprompt.dg.sampling import prompt_pool
from diffprompt.paths import cache_dir
from diffprompt.prompts import OWN_PROMPT, SceneText

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(_):
    pass


@pytest.mark.parametrize("noise", [False, True])
def test_an_images_features_do_not_depend_on_its_batch(tiny_sd, mini_root, noise):
    """Alone, first or last of a batch, with any neighbours: the same maps and latents."""
    m = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="fixed", noise=noise))
    ds = build_dataset("gta5", "train", mini_root)
    alone, z_alone = {}, {}
    for i in (0, 1):
        C.MEMORY.clear()
        alone[i] = C.FeatureCache(m).get(ds, [i])
        C.MEMORY.clear()
        z_alone[i] = C.FeatureCache(m).latents(ds, [i])[0]
    for order in ([0, 1, 2], [2, 1, 0]):
        C.MEMORY.clear()
        z = C.FeatureCache(m).latents(ds, order)
        C.MEMORY.clear()
        rng = torch.get_rng_state()
        got = C.FeatureCache(m).get(ds, order)
        assert torch.equal(torch.get_rng_state(), rng)  # a miss draws nothing from torch's RNG
        for i in (0, 1):
            j = order.index(i)
            assert torch.equal(z[j], z_alone[i]), (order, i)
            for k in got:
                assert torch.equal(got[k][j], alone[i][k][0]), (order, i, k)


def test_a_warm_cache_gives_the_numbers_of_a_cold_one(tiny_sd, mini_root, tmp_path):
    """Train and evaluate with a cold cache, then again with a cache first filled by another
    user (as notebook 01 would: other images, other batches and order, another model object):
    the losses, the confusion matrices and the mIoU table are identical."""
    cfg = TrainConfig(
        model=str(tiny_sd),
        data_root=str(mini_root),
        steps=3,
        batch_size=2,
        max_train_images=4,
        max_eval_images=2,
        targets=("cityscapes",),
        fpn_width=8,
        head_width=8,
        warmup=1,
        ckpt_every=0,
        progress="log",
        prompt_pool=2,
        scene_text="a photo of a street",
        dropout=0.1,  # the head draws from torch's generator, beside any cache miss
    )

    def run(results):
        t = train_dg(cfg, results, log=quiet)
        sets = t.eval_sets()
        cms = t.evaluate(sets)
        return t.state.log, {k: v.mat for k, v in cms.items()}, t.miou_rows(cms, sets)

    C.MEMORY.clear()
    cold = run(tmp_path / "cold")

    C.MEMORY.clear()
    warm_dir = tmp_path / "warm"
    other = build_model(dataclasses.replace(cfg, fpn_width=4, head_width=4))  # same backbone
    fc = C.FeatureCache(other, cache_dir(warm_dir))
    data = open_run_data(cfg)
    source, train_idx = data.source, data.train_indices
    prompts = [*map(SceneText, prompt_pool(cfg)), SceneText(cfg.scene_text), OWN_PROMPT]
    # overlapping images, in other batches (of 3, in another order) than the run's
    order = list(reversed(range(1, min(len(source), len(train_idx) + 2))))
    for prompt in prompts:
        for s in range(0, len(order), 3):
            fc.get(source, order[s : s + 3], prompt)
    for ds in data.eval_sets.values():
        for prompt in prompts:
            fc.get(ds, list(reversed(range(min(len(ds), 3)))), prompt)
    assert fc.misses > 0
    C.MEMORY.clear()  # the run reads what the other one left on disk
    warm = run(warm_dir)

    assert [e["loss"] for e in warm[0]] == [e["loss"] for e in cold[0]]
    for name, mat in cold[1].items():
        assert torch.equal(warm[1][name], mat), name
    assert warm[2] == cold[2]


def test_entries_of_another_thread_count_are_not_read(tiny_sd, mini_root):
    """CPU GEMMs split their sums over threads: maps computed with other threads round
    otherwise, so they are another entry (computed again), not served."""
    m = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="fixed"))
    ds = build_dataset("gta5", "train", mini_root)
    C.MEMORY.clear()
    fc = C.FeatureCache(m)
    fc.get(ds, [0])
    fc.get(ds, [0])
    assert (fc.hits, fc.misses) == (1, 1)
    assert C.compute_identity("cpu")["threads"] == 1
    torch.set_num_threads(2)
    try:
        assert C.compute_identity("cpu")["threads"] == 2
        fc.get(ds, [0])
    finally:
        torch.set_num_threads(1)
    assert (fc.hits, fc.misses) == (1, 2)
