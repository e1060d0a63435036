"""Paired transforms: the same geometric change applied to an image and its mask.

Every transform is a callable that takes a sample dict and returns a new one; keys other
than ``"image"`` and ``"mask"`` pass through untouched, and a sample without ``"mask"``
(unlabeled splits) is fine. Before ``ToFloat``/``Normalize`` the image is a uint8 tensor
(3, H, W); the mask is always an int64 tensor (H, W) of trainIds in {0..18, 255}.

End every pipeline with ``ToFloat`` or ``Normalize`` so the image reaches the model as
float32. Random transforms take an optional ``torch.Generator`` (else the global torch
RNG). A generator object is copied into each DataLoader worker with the same state, so
with ``num_workers > 0`` leave ``generator=None``: the DataLoader seeds the global RNG of
each worker differently (``base_seed + worker_id``).

Each transform says whether it is ``deterministic``: Resize, ToFloat, Normalize and a
Compose of such are; the random ones are not. ``SegDataset.masks`` keeps labels in memory
only under a deterministic transform (``is_deterministic``).

>>> t = Compose([RandomScale(0.5, 2.0), RandomCrop((512, 512)), RandomHorizontalFlip(),
...              Normalize.diffusion()])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from diffprompt.labels import IGNORE_INDEX

Sample = dict[str, Any]

#: ImageNet statistics (RGB, for images in [0, 1]) used by most pretrained backbones.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: Stable Diffusion's VAE expects images in [-1, 1]: (x - 0.5) / 0.5.
DIFFUSION_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
DIFFUSION_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Return a uniform integer in [0, high]."""
    return int(torch.randint(0, high + 1, (1,), generator=generator).item())


def _rand(generator: torch.Generator | None) -> float:
    """Return a uniform float in [0, 1)."""
    return float(torch.rand(1, generator=generator).item())


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Return ``image`` (3, H, W) resized to ``size`` (h, w), bilinear with antialiasing.

    The dtype is kept: a uint8 image is rounded and clamped back to uint8.
    """
    out = F.interpolate(
        image[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
    )[0]  # (3, h, w)
    if image.dtype == torch.uint8:
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(image.dtype)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Return ``mask`` (H, W) resized to ``size`` (h, w) by nearest neighbour (no new values)."""
    out = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")
    return out[0, 0].to(mask.dtype)  # (h, w)


def is_deterministic(transform: Callable[[Sample], Sample] | None) -> bool:
    """Return whether ``transform`` gives the same output for the same sample every time:
    True for None and for a transform whose ``deterministic`` attribute is true."""
    return transform is None or getattr(transform, "deterministic", False) is True


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]):
        self.transforms = list(transforms)

    @property
    def deterministic(self) -> bool:
        """Return whether every part is deterministic (has a true ``deterministic``)."""
        return all(t is not None and is_deterministic(t) for t in self.transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class Resize:
    """Resize image (bilinear, antialiased) and mask (nearest) to a fixed (h, w)."""

    deterministic = True  # the same sample gives the same output

    def __init__(self, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        out["image"] = resize_image(sample["image"], self.size)
        if "mask" in sample:
            out["mask"] = resize_mask(sample["mask"], self.size)
        return out

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomScale:
    """Scale image and mask by one factor drawn uniformly from [min_scale, max_scale].

    The aspect ratio is kept; the new size is ``round(H * s), round(W * s)`` (at least 1).
    """

    deterministic = False  # random: each call draws anew

    def __init__(
        self, min_scale: float, max_scale: float, generator: torch.Generator | None = None
    ):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        s = self.min_scale + (self.max_scale - self.min_scale) * _rand(self.generator)
        h, w = sample["image"].shape[-2:]
        size = (max(1, round(h * s)), max(1, round(w * s)))
        return Resize(size)(sample)

    def __repr__(self) -> str:
        return f"RandomScale({self.min_scale}, {self.max_scale})"


class RandomCrop:
    """Crop a random (h, w) window from image and mask at the same place.

    An image smaller than the crop is first padded at the bottom/right (image with 0,
    mask with 255 = ignore) when ``pad_if_needed`` is true; otherwise a ValueError names
    both sizes.
    """

    deterministic = False  # random: each call draws anew

    def __init__(
        self,
        size: tuple[int, int],
        pad_if_needed: bool = True,
        generator: torch.Generator | None = None,
    ):
        self.size = (int(size[0]), int(size[1]))
        self.pad_if_needed = pad_if_needed
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        ch, cw = self.size
        image = sample["image"]  # (3, H, W)
        mask = sample.get("mask")  # (H, W) or None
        h, w = image.shape[-2:]
        if h < ch or w < cw:
            if not self.pad_if_needed:
                raise ValueError(
                    f"RandomCrop size (h={ch}, w={cw}) is larger than the image "
                    f"(h={h}, w={w}); pass pad_if_needed=True or resize the image first"
                )
            ph, pw = max(ch - h, 0), max(cw - w, 0)
            image = F.pad(image, (0, pw, 0, ph), value=0)
            if mask is not None:
                mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE_INDEX)
            h, w = h + ph, w + pw
        top, left = _randint(h - ch, self.generator), _randint(w - cw, self.generator)
        out = dict(sample)
        out["image"] = image[..., top : top + ch, left : left + cw]  # (3, ch, cw)
        if mask is not None:
            out["mask"] = mask[top : top + ch, left : left + cw]  # (ch, cw)
        return out

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, pad_if_needed={self.pad_if_needed})"


class RandomHorizontalFlip:
    """Flip image and mask left-right together with probability ``p``."""

    deterministic = False  # random: each call draws anew

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p = float(p)
        self.generator = generator

    def __call__(self, sample: Sample) -> Sample:
        if _rand(self.generator) >= self.p:
            return sample
        out = dict(sample)
        out["image"] = sample["image"].flip(-1)
        if "mask" in sample:
            out["mask"] = sample["mask"].flip(-1)
        return out

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def to_float(image: torch.Tensor) -> torch.Tensor:
    """Return a float32 image in [0, 1]: uint8 is divided by 255, float is cast as is."""
    if image.dtype == torch.uint8:
        return image.to(torch.float32).div_(255.0)
    return image.to(torch.float32)


class ToFloat:
    """Convert the uint8 image (3, H, W) to float32 in [0, 1]; the mask is unchanged."""

    deterministic = True

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        out["image"] = to_float(sample["image"])
        return out

    def __repr__(self) -> str:
        return "ToFloat()"


class Normalize:
    """Return ``(image - mean) / std`` per channel; a uint8 image is scaled to [0, 1] first.

    ``Normalize.imagenet()`` for ImageNet-pretrained backbones, ``Normalize.diffusion()``
    for the Stable Diffusion VAE (images in [-1, 1]). ``inverse`` undoes it (to [0, 1]).
    """

    deterministic = True

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need the same length and std > 0: {mean}, {std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)  # (3, 1, 1)

    @classmethod
    def imagenet(cls) -> Normalize:
        """Return a Normalize with ImageNet mean and std."""
        return cls(IMAGENET_MEAN, IMAGENET_STD)

    @classmethod
    def diffusion(cls) -> Normalize:
        """Return a Normalize mapping [0, 1] to [-1, 1] (the diffusion VAE's input range)."""
        return cls(DIFFUSION_MEAN, DIFFUSION_STD)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Return the normalized float32 image; works on (3, H, W) or (B, 3, H, W)."""
        image = to_float(image)
        return (image - self.mean.to(image.device)) / self.std.to(image.device)

    def inverse(self, image: torch.Tensor) -> torch.Tensor:
        """Return ``image * std + mean``: a normalized image back in [0, 1] (float32)."""
        return image * self.std.to(image.device) + self.mean.to(image.device)

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        out["image"] = self.normalize(sample["image"])
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


class PhotometricAugment:
    """Random photometric changes of a float image batch (B, 3, H, W) in [0, 1], per image:
    brightness, contrast and saturation factors in [1 - s, 1 + s], then (probability 0.5) a
    Gaussian blur of sigma in [0.1, ``max_blur``], then Gaussian noise of std in
    [0, ``max_noise``]. Geometry and labels are unchanged. Call as ``aug(images, generator)``.
    """

    deterministic = False  # random: each call draws anew

    def __init__(self, strength: float = 0.4, max_blur: float = 1.5, max_noise: float = 0.05):
        self.strength, self.max_blur, self.max_noise = strength, max_blur, max_noise

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        b = x.shape[0]

        def u(lo: float, hi: float) -> torch.Tensor:
            return (lo + (hi - lo) * torch.rand(b, generator=generator)).view(b, 1, 1, 1).to(x)

        s = self.strength
        x = x * u(1 - s, 1 + s)  # brightness
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * u(1 - s, 1 + s) + mean  # contrast
        grey = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(
            1, keepdim=True
        )
        x = (x - grey) * u(1 - s, 1 + s) + grey  # saturation
        blur = torch.rand(b, generator=generator) < 0.5
        sigma = 0.1 + (self.max_blur - 0.1) * torch.rand(b, generator=generator)
        out = []
        for i in range(b):
            xi = x[i : i + 1]
            if blur[i]:
                r = max(1, int(3 * float(sigma[i])))
                k = torch.exp(
                    -(torch.arange(-r, r + 1, dtype=x.dtype) ** 2) / (2 * float(sigma[i]) ** 2)
                )
                k = (k / k.sum()).to(x.device)
                xi = F.pad(xi, (r, r, r, r), mode="reflect")
                xi = F.conv2d(xi, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
                xi = F.conv2d(xi, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
            out.append(xi)
        x = torch.cat(out)
        noise = torch.randn(x.shape, generator=generator).to(x) * u(0, self.max_noise)
        return (x + noise).clamp(0, 1)

    def __repr__(self) -> str:
        return f"PhotometricAugment({self.strength}, {self.max_blur}, {self.max_noise})"
