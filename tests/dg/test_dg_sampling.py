"""What each DG step sees: batches, flips and prompts as pure functions of (seed, step)."""

import pytest
import torch

from diffprompt.dg.config import TrainConfig
from diffprompt.dg.sampling import (
    BatchShare,
    prompt_pool,
    sample_flips,
    sample_indices,
    step_generator,
    step_prompts,
)
from diffprompt.prompts import OWN_PROMPT, SceneText, vocabulary


def test_vocabulary_size_and_prompt_pool():
    assert all(len(v) == 1 for v in vocabulary(1).values())
    with pytest.raises(ValueError, match=">= 0"):
        vocabulary(-1)
    one = TrainConfig(vocabulary_size=1, prompt_pool=8)
    assert len(prompt_pool(one)) == 1  # one descriptor per key: one possible prompt
    pool = prompt_pool(TrainConfig(prompt_pool=8))
    assert len(pool) == len(set(pool)) == 8
    assert pool == prompt_pool(TrainConfig(prompt_pool=8, seed=5))  # pool_seed, not seed
    assert pool != prompt_pool(TrainConfig(prompt_pool=8, pool_seed=1))
    assert prompt_pool(TrainConfig(prompt_mode="fixed")) == []


def test_shares_of_processes_and_micro_batches_tile_the_global_batch():
    one = BatchShare(batch_size=8)
    assert list(one.positions(3, 0)) == list(range(24, 32))
    split = [
        list(BatchShare(8, grad_accum=2, num_processes=2, process_index=p).positions(3, m))
        for m in range(2)
        for p in range(2)
    ]
    assert sorted(i for part in split for i in part) == list(range(24, 32))
    assert BatchShare(8, 2, 2).images_per_process == 2


def test_each_epoch_draws_every_image_once_and_depends_on_the_seed():
    indices = list(range(10, 17))  # 7 images
    first = sample_indices(0, range(0, 7), indices)
    second = sample_indices(0, range(7, 14), indices)
    assert sorted(first) == sorted(second) == indices and first != second
    assert sample_indices(0, range(3, 9), indices) == (first + second)[3:9]  # pure in position
    assert sample_indices(1, range(0, 7), indices) != first


def test_flips_and_prompts_are_functions_of_seed_and_position():
    flips = sample_flips(0, range(0, 64))
    assert flips.dtype == torch.bool and 10 < int(flips.sum()) < 54
    assert torch.equal(sample_flips(0, range(32, 64)), flips[32:])
    assert not sample_flips(0, range(8), enabled=False).any()
    pool = [SceneText(t) for t in "abcd"]
    vocab = vocabulary()
    assert step_prompts(0, 5, 1, pool, vocab) == [OWN_PROMPT]
    assert step_prompts(0, 5, 1, pool, vocab, pool[2]) == [pool[2]]
    drawn = step_prompts(0, 5, 2, pool, vocab)
    assert len(set(drawn)) == 2 and set(drawn) <= set(pool)
    assert step_prompts(0, 5, 2, pool, vocab) == drawn
    fresh = step_prompts(0, 5, 3, [], vocab)
    assert len(fresh) == 3 and all(isinstance(p, SceneText) and p.text for p in fresh)
    assert fresh[0].texts(None, [7, 8]) == [fresh[0].text] * 2
    a, b = step_generator(0, 1, 2), step_generator(0, 2, 1)
    assert torch.rand(1, generator=a) != torch.rand(1, generator=b)  # keys do not commute
