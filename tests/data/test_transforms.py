"""Paired transforms: shapes, mask values, determinism, padding, normalization."""

import pytest
import torch

from diffprompt.data.transforms import (
    DIFFUSION_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    ToFloat,
)


def make_sample(h: int = 12, w: int = 20, seed: int = 0) -> dict:
    """Return a sample with a random uint8 image and a mask of values {0, 5, 13, 255}."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    mask = torch.tensor([0, 5, 13, 255])[torch.randint(0, 4, (h, w), generator=g)]
    return {"image": image, "mask": mask, "name": "x", "meta": {"split": "val"}}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_resize_shapes_dtypes_and_nearest_mask():
    s = make_sample()
    out = Resize((7, 33))(s)
    assert out["image"].shape == (3, 7, 33) and out["image"].dtype == torch.uint8
    assert out["mask"].shape == (7, 33) and out["mask"].dtype == torch.int64
    assert set(out["mask"].unique().tolist()) <= {0, 5, 13, 255}  # no new values
    assert out["name"] == "x" and out["meta"] == {"split": "val"}  # other keys pass through
    assert s["image"].shape == (3, 12, 20)  # the input is not modified
    up = Resize((24, 40))(s)  # exact 2x nearest upsampling repeats every pixel
    assert torch.equal(up["mask"][::2, ::2], s["mask"])


def test_resize_of_a_constant_image_is_constant():
    s = {"image": torch.full((3, 10, 10), 77, dtype=torch.uint8)}
    out = Resize((3, 4))(s)
    assert torch.all(out["image"] == 77) and "mask" not in out


def test_random_scale_keeps_aspect_and_is_seeded():
    s = make_sample(h=10, w=20)
    a = RandomScale(0.5, 2.0, generator=gen(3))(s)
    b = RandomScale(0.5, 2.0, generator=gen(3))(s)
    h, w = a["image"].shape[-2:]
    assert a["mask"].shape == (h, w) and abs(w / h - 2.0) < 0.25
    assert 5 <= h <= 20
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert set(a["mask"].unique().tolist()) <= {0, 5, 13, 255}
    with pytest.raises(ValueError):
        RandomScale(2.0, 1.0)


def test_random_crop_shapes_and_alignment():
    s = make_sample()
    # encode each pixel's position in both image and mask to check they are cut together
    pos = torch.arange(12 * 20).reshape(12, 20)
    s["mask"] = pos
    s["image"] = (pos % 256).to(torch.uint8).expand(3, -1, -1).clone()
    out = RandomCrop((5, 7), generator=gen(0))(s)
    assert out["image"].shape == (3, 5, 7) and out["mask"].shape == (5, 7)
    assert torch.equal(out["image"][0].long(), out["mask"] % 256)
    same = RandomCrop((5, 7), generator=gen(0))(s)
    assert torch.equal(same["mask"], out["mask"])


def test_random_crop_pads_with_zero_and_255():
    s = make_sample(h=4, w=6)
    out = RandomCrop((8, 10), generator=gen(1))(s)
    assert out["image"].shape == (3, 8, 10) and out["mask"].shape == (8, 10)
    assert torch.equal(out["mask"][:4, :6], s["mask"])  # padding goes bottom/right
    assert torch.all(out["mask"][4:] == 255) and torch.all(out["mask"][:, 6:] == 255)
    assert torch.all(out["image"][:, 4:] == 0) and torch.all(out["image"][:, :, 6:] == 0)
    # only one side too small: the other side is cropped
    out = RandomCrop((2, 10), generator=gen(1))(s)
    assert out["image"].shape == (3, 2, 10)
    assert torch.all(out["mask"][:, 6:] == 255)


def test_random_crop_without_padding_raises_naming_both_sizes():
    with pytest.raises(ValueError, match=r"h=8, w=10.*h=4, w=6"):
        RandomCrop((8, 10), pad_if_needed=False)(make_sample(h=4, w=6))


def test_flip_is_an_involution_and_flips_both():
    s = make_sample()
    flip = RandomHorizontalFlip(p=1.0)
    once = flip(s)
    assert torch.equal(once["image"], s["image"].flip(-1))
    assert torch.equal(once["mask"], s["mask"].flip(-1))
    twice = flip(once)
    assert torch.equal(twice["image"], s["image"]) and torch.equal(twice["mask"], s["mask"])
    never = RandomHorizontalFlip(p=0.0)(s)
    assert torch.equal(never["image"], s["image"])


def test_flip_with_generator_is_reproducible():
    s = make_sample()

    def flips(seed):
        f = RandomHorizontalFlip(0.5, generator=gen(seed))
        return [torch.equal(f(s)["mask"], s["mask"]) for _ in range(20)]

    assert flips(5) == flips(5)
    assert 0 < sum(flips(5)) < 20  # some flipped, some not


def test_compose_pipeline_same_seed_same_output():
    s = make_sample(h=16, w=24)

    def pipeline(seed):
        g = gen(seed)
        return Compose(
            [
                RandomScale(0.5, 1.5, generator=g),
                RandomCrop((8, 8), generator=g),
                RandomHorizontalFlip(generator=g),
                Normalize.imagenet(),
            ]
        )

    a, b, c = pipeline(0)(s), pipeline(0)(s), pipeline(1)(s)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].dtype == torch.float32 and a["image"].shape == (3, 8, 8)


def test_to_float_range():
    s = make_sample()
    out = ToFloat()(s)
    assert out["image"].dtype == torch.float32
    assert torch.allclose(out["image"] * 255, s["image"].float())
    assert torch.equal(out["mask"], s["mask"])


def test_normalize_round_trip_and_presets():
    s = make_sample()
    for norm in (
        Normalize.imagenet(),
        Normalize.diffusion(),
        Normalize((0.1, 0.2, 0.3), (1, 2, 3)),
    ):
        out = norm(s)["image"]
        back = norm.inverse(out)
        assert torch.allclose(back, s["image"].float() / 255, atol=1e-6)
    d = Normalize.diffusion()(s)["image"]
    assert d.min() >= -1 and d.max() <= 1
    assert torch.allclose(d, s["image"].float() / 255 * 2 - 1, atol=1e-6)
    assert DIFFUSION_MEAN == (0.5, 0.5, 0.5)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    # a batched image works too
    batch = torch.stack([s["image"], s["image"]]).float() / 255  # (2, 3, H, W)
    assert Normalize.imagenet().normalize(batch).shape == batch.shape
