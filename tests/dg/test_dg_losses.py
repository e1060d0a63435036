"""DG losses: the consistency term, cross-entropy over K prompts, and the entropy."""

import math

import pytest
import torch
import torch.nn.functional as F

from diffprompt.dg.losses import consistency_loss, dg_loss, entropy, mean_entropy


def _logits(k=3, b=2, c=5, h=4, w=6, seed=0):
    return torch.randn(k, b, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["js", "sym_kl"])
def test_consistency_is_zero_for_identical_predictions_and_positive_otherwise(kind):
    one = _logits(k=1)
    same = one.expand(3, -1, -1, -1, -1)
    assert consistency_loss(same, kind).item() == pytest.approx(0.0, abs=1e-6)
    assert consistency_loss(one, kind).item() == 0.0  # K = 1: nothing to compare
    assert consistency_loss(_logits(), kind).item() > 1e-3
    # shifting all logits of a pixel by a constant does not change the distribution
    shifted = same + torch.randn(3, 2, 1, 4, 6)
    assert consistency_loss(shifted, kind).item() == pytest.approx(0.0, abs=1e-5)


def test_consistency_matches_a_hand_computation():
    p, q = torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5])
    logits = torch.stack([p.log(), q.log()]).view(2, 1, 2, 1, 1)

    def h(x):
        return -(x * x.log()).sum().item()

    js = h((p + q) / 2) - (h(p) + h(q)) / 2
    kl = (p * (p / q).log()).sum() + (q * (q / p).log()).sum()
    assert consistency_loss(logits, "js").item() == pytest.approx(js, rel=1e-5)
    assert consistency_loss(logits, "sym_kl").item() == pytest.approx(kl.item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown consistency"):
        consistency_loss(logits, "l2")


def test_consistency_restricted_to_valid_pixels():
    logits = _logits(k=2, b=1, h=1, w=2)
    logits[:, :, :, :, 1] = logits[0:1, :, :, :, 1]  # pixel 1 agrees, pixel 0 does not
    valid = torch.tensor([[[False, True]]])
    assert consistency_loss(logits, "js", valid).item() == pytest.approx(0.0, abs=1e-6)
    assert consistency_loss(logits, "js", ~valid).item() > 1e-3


def test_k1_without_consistency_is_plain_cross_entropy():
    logits = _logits(k=1, c=19, h=8, w=8)
    y = torch.randint(0, 19, (2, 16, 16), generator=torch.Generator().manual_seed(1))
    y[0, :3] = 255  # ignored pixels
    out = dg_loss(logits, y, weight=0.0)
    up = F.interpolate(logits[0], size=(16, 16), mode="bilinear", align_corners=False)
    ref = F.cross_entropy(up, y, ignore_index=255)
    torch.testing.assert_close(out["loss"], ref)
    assert out["consistency"].item() == 0.0


def test_loss_is_mean_ce_over_prompts_plus_weighted_consistency():
    logits = _logits(k=2, c=19, h=8, w=8)
    y = torch.randint(0, 19, (2, 8, 8), generator=torch.Generator().manual_seed(2))
    out = dg_loss(logits, y, weight=0.5)
    ce = (F.cross_entropy(logits[0], y) + F.cross_entropy(logits[1], y)) / 2
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["loss"], ce + 0.5 * consistency_loss(logits))


def test_a_global_denominator_gives_the_sum_over_it():
    logits = _logits(k=1, c=19, h=8, w=8)
    y = torch.randint(0, 19, (2, 8, 8), generator=torch.Generator().manual_seed(3))
    y[1] = 255
    labeled = (y != 255).sum()
    mean = dg_loss(logits, y)["ce"]
    torch.testing.assert_close(dg_loss(logits, y, ce_denominator=labeled)["ce"], mean)
    halved = dg_loss(logits, y, ce_denominator=2 * labeled)["ce"]
    torch.testing.assert_close(halved, mean / 2)


def test_entropy_of_known_distributions():
    uniform = torch.zeros(2, 19, 3, 4)
    assert mean_entropy(uniform).item() == pytest.approx(math.log(19), rel=1e-6)
    peaked = torch.full((1, 19, 2, 2), -1e4)
    peaked[:, 3] = 1e4
    assert mean_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert entropy(p, 0).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    # from log-probabilities (exact) or from probabilities (clamped log): the same value
    logp = torch.randn(4, 7).log_softmax(1)
    torch.testing.assert_close(entropy(logp.exp(), 1, logp), entropy(logp.exp(), 1))


# ---------------------------------------------------------------------------------------
# loss resolution
# ---------------------------------------------------------------------------------------


def _labels_and_logits(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 19, (3, 32, 64), generator=g)
    y[0, :5] = 255  # ignored pixels
    y[2] = 255  # an image without labels
    return y, torch.randn(3, 19, 8, 16, generator=g)


def test_class_counts_equal_the_pooled_one_hot():
    from diffprompt.dg.losses import class_counts

    y, _ = _labels_and_logits()
    counts = class_counts(y, (8, 16), 19)
    onehot = F.one_hot(torch.where(y == 255, 0, y), 19).float() * (y != 255)[..., None]
    ref = onehot.view(3, 8, 4, 16, 4, 19).sum((2, 4)).permute(0, 3, 1, 2)
    assert torch.equal(counts, ref)
    assert counts.sum() == (y != 255).sum()


def test_area_loss_is_the_cross_entropy_of_nearest_upsampled_logits():
    from diffprompt.dg.losses import cross_entropy

    y, logits = _labels_and_logits()
    up = F.interpolate(logits, size=(32, 64), mode="nearest")
    ref = F.cross_entropy(up, y, ignore_index=255)
    assert torch.allclose(cross_entropy(logits, y, "area"), ref, rtol=1e-5)
    w = torch.rand(19) + 0.5  # class weights: the weighted mean, as F.cross_entropy
    ref_w = F.cross_entropy(up, y, weight=w, ignore_index=255)
    assert torch.allclose(cross_entropy(logits, y, "area", class_weight=w), ref_w, rtol=1e-5)
    # with a denominator: the sum over labeled pixels divided by it
    ref_sum = F.cross_entropy(up, y, ignore_index=255, reduction="sum") / 7.0
    assert torch.allclose(cross_entropy(logits, y, "area", denominator=7.0), ref_sum, rtol=1e-5)


def test_nearest_loss_reads_the_centre_label_of_each_cell():
    from diffprompt.dg.losses import cross_entropy, nearest_labels

    y, logits = _labels_and_logits()
    centre = nearest_labels(y, (8, 16))
    assert centre.shape == (3, 8, 16)
    assert torch.equal(centre[1, 2, 3], y[1, 2 * 4 + 2, 3 * 4 + 2])
    ref = F.cross_entropy(logits, centre, ignore_index=255)
    assert torch.allclose(cross_entropy(logits, y, "nearest"), ref)


def test_labels_resolution_upsamples_bilinearly_and_dg_loss_takes_the_choice():
    y, logits = _labels_and_logits()
    up = F.interpolate(logits, size=(32, 64), mode="bilinear", align_corners=False)
    ref = F.cross_entropy(up, y, ignore_index=255)
    k2 = torch.stack([logits, logits])
    assert torch.allclose(dg_loss(k2, y)["ce"], ref, rtol=1e-5)  # "labels" is the default
    area = dg_loss(k2, y, resolution="area")["ce"]
    assert not torch.allclose(area, ref)
    with pytest.raises(ValueError, match="loss_resolution"):
        dg_loss(k2, y, resolution="bicubic")
    with pytest.raises(ValueError, match="whole multiple"):
        dg_loss(k2[..., :7, :], y, resolution="area")
