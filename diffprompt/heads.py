"""The segmentation head: Semantic FPN (Kirillov et al., Panoptic FPN, CVPR 2019), as VPD uses.

The head reads a backbone's dict of multi-scale maps. Maps of the same stride are
concatenated (VPD concatenates the class-token cross-attention maps ``a{i}`` to the UNet
features ``s{i}`` of their scale), then:

1. FPN: a 1x1 lateral conv per level to ``fpn_width`` channels, a top-down pathway
   (upsample the coarser level, add), a 3x3 output conv per level;
2. semantic branch: each level goes through log2(stride / finest stride) stages of
   3x3 conv + GroupNorm + ReLU + 2x bilinear upsampling (one plain stage for the finest
   level), reaching the finest stride; the levels are summed;
3. dropout and a 1x1 classifier give logits at the finest stride.

:class:`diffprompt.model.SegModel` upsamples the logits to the image size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _gn(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or fewer when ``channels`` is not a multiple of 32."""
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


def _conv_gn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _gn(cout), nn.ReLU(True))


def levels_of(
    channels: Mapping[str, int], strides: Mapping[str, int]
) -> list[tuple[int, list[str]]]:
    """Group map names by stride: [(stride, [names sorted])], finest stride first."""
    if set(channels) != set(strides):
        raise ValueError(
            f"channels {sorted(channels)} and strides {sorted(strides)} name different maps"
        )
    by_stride: dict[int, list[str]] = {}
    for name in sorted(channels):
        by_stride.setdefault(int(strides[name]), []).append(name)
    out = sorted(by_stride.items())
    finest = out[0][0]
    for s, names in out:
        ratio = s / finest
        if ratio != 2 ** round(math.log2(ratio)):
            raise ValueError(
                f"stride {s} of {names} is not a power-of-two multiple of the "
                f"finest stride {finest}"
            )
    return out


class SemanticFPN(nn.Module):
    """Semantic FPN over a dict of maps ``{name: (B, C_name, H/stride, W/stride)}``.

    ``channels`` and ``strides`` say what the backbone returns (e.g. ``backbone.
    feature_channels`` and ``backbone.feature_strides``). ``forward`` returns logits
    (B, num_classes, H/s, W/s), s = :attr:`stride` (the finest input stride).
    """

    def __init__(
        self,
        channels: Mapping[str, int],
        strides: Mapping[str, int],
        num_classes: int = 19,
        fpn_width: int = 128,  # FPN channels (mmseg's Semantic FPN: 256)
        head_width: int = 64,  # semantic-branch channels (mmseg: 128)
        dropout: float = 0.1,  # before the classifier (mmseg: 0.1)
    ) -> None:
        super().__init__()
        self.levels = levels_of(channels, strides)
        self.stride = self.levels[0][0]
        self.num_classes = num_classes
        self.lateral = nn.ModuleList(
            nn.Conv2d(sum(channels[n] for n in names), fpn_width, 1) for _, names in self.levels
        )
        self.output = nn.ModuleList(_conv_gn_relu(fpn_width, fpn_width) for _ in self.levels)
        self.branches = nn.ModuleList()
        for s, _ in self.levels:
            n_up = round(math.log2(s / self.stride))
            stages = [
                _conv_gn_relu(fpn_width if i == 0 else head_width, head_width)
                for i in range(max(1, n_up))
            ]
            self.branches.append(nn.ModuleList(stages))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(head_width, num_classes, 1)

    def forward(self, feats: Mapping[str, Tensor]) -> Tensor:
        """Return logits (B, num_classes, h, w) at the finest stride of ``feats``."""
        missing = [n for _, names in self.levels for n in names if n not in feats]
        if missing:
            raise KeyError(f"the head expects maps {missing} that the features do not hold")
        lat = [
            conv(torch.cat([feats[n].float() for n in names], 1))
            for conv, (_, names) in zip(self.lateral, self.levels, strict=True)
        ]
        for i in range(len(lat) - 2, -1, -1):  # top-down: coarse to fine
            lat[i] = lat[i] + F.interpolate(
                lat[i + 1], size=lat[i].shape[-2:], mode="bilinear", align_corners=False
            )
        size = lat[0].shape[-2:]
        out = 0
        for x, conv, stages in zip(lat, self.output, self.branches, strict=True):
            x = conv(x)
            for stage in stages:
                x = stage(x)
                if x.shape[-2:] != size:
                    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            if x.shape[-2:] != size:  # odd sizes: snap to the finest level
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            out = out + x
        return self.classifier(self.dropout(out))
