"""Feature probing: do diffusion features generalize across domains better than others?

Each backbone is frozen and the same head, a linear probe (BatchNorm + 1x1 convolution over
its maps resized to a common stride, ``ProbeConfig.stride``), is trained on the source
domain only, then scored on the source's val split and on every target. The maps come from
the feature cache (:class:`diffprompt.cache.FeatureCache`), so the backbones, sweeps and
seeds of notebook 01 compute each map once.

Label-free measures of the domain gap between source and target features
(:func:`linear_cka`, :func:`mmd`): linear CKA between the position-wise mean maps of the two
domains (rows: the h x w positions, columns: channels; street scenes share their layout, so
positions pair the two sets without labels), and the MMD (RBF kernel, median bandwidth)
between the images' globally pooled features. :func:`gap_measures` computes them per map;
:mod:`diffprompt.experiments.probing` puts them beside the mIoU drop.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffprompt.benchmarks import TARGETS, eval_classes
from diffprompt.cache import FeatureCache
from diffprompt.data import build_dataset
from diffprompt.data.roots import resolve_data_root
from diffprompt.evaluate import ConfusionMatrix, predicted_classes
from diffprompt.labels import CLASSES, IGNORE_INDEX, NUM_CLASSES
from diffprompt.model import SegModel
from diffprompt.preflight import check_files, check_values
from diffprompt.prompts import PromptConfig, Prompts
from diffprompt.settings import as_declared, setting

#: Images per batch when maps are read from the cache.
CHUNK = 16


@dataclass
class ProbeConfig:
    """The probe and its data (all ours)."""

    source: str = setting("gta5", "the probe is trained on this domain's train split")
    targets: tuple[str, ...] = setting(TARGETS, "the sets it is scored on")
    data_root: str = setting("miniature", '"miniature" (embedded) or a data folder')
    n_train: int = setting(100, "source train images the probe is fitted on", range=">= 1")
    n_eval: int = setting(20, "images of the source val split and of each target", range=">= 1")
    steps: int = setting(150, "AdamW steps of the probe", range=">= 1")
    batch_size: int = setting(8, "images per step", range=">= 1")
    lr: float = setting(1e-2, "cosine decay to 0", range="> 0")
    stride: int = setting(
        4, "maps are resized to 1/stride of the image (the probe's resolution)", range=">= 1"
    )
    maps: str = setting(
        "s",
        'which maps the probe reads: "s" (decoder), "a" (class-token cross-attention), "sa" '
        '(both); or explicit names joined by "+"',
    )
    seed: int = setting(0, "the probe's init and batches", range=">= 0")

    def __post_init__(self):
        as_declared(self)


# ---------------------------------------------------------------------------------------
# Feature access
# ---------------------------------------------------------------------------------------


class Features:
    """One frozen backbone (under one context) on the probe's data sets, through the cache.

    ``backbone``: a DiffusionBackbone (with ``prompts``, giving its context) or a feature
    backbone taking images only (the comparators). ``cache_folder``: the feature cache's
    folder (None: in memory only).
    """

    def __init__(self, backbone, prompts=None, cache_folder=None, name: str = ""):
        self.name = name or getattr(backbone, "origin", type(backbone).__name__)
        self.model = SegModel(backbone, nn.Identity(), prompts)
        self.cache = FeatureCache(self.model, cache_folder)

    def get(self, dataset, indices: Sequence[int]) -> dict[str, Tensor]:
        """Return {map name: (B, C, h, w)} float32 of images ``indices``."""
        return self.cache.get(dataset, indices)


def features_of(bb, name: str, cache_folder=None, tokens: str = "scene") -> Features:
    """Return :class:`Features` of a backbone: a diffusion backbone under the context
    ``tokens`` ("scene": [category tokens ; the default scene prompt], "null": the empty
    prompt; no adapter), a comparator on images alone."""
    prompts = None
    if hasattr(bb, "text_encoder"):
        cfg = PromptConfig(tokens=tokens, adapter=False)
        prompts = Prompts(bb.text_encoder, bb.tokenizer, CLASSES, cfg)
    return Features(bb, prompts, cache_folder, name)


def with_features(bb, **changes):
    """Return a view of a DiffusionBackbone with other feature settings (timesteps, noise,
    attention tokens, ...) sharing its modules and hooks. ``blocks`` cannot change (hooks
    are installed for them): select maps instead."""
    if "blocks" in changes:
        raise ValueError("blocks are fixed when the hooks are installed: select maps instead")
    view = copy.copy(bb)
    view.cfg = dataclasses.replace(bb.cfg, **changes)
    return view


def select_maps(feats: Mapping[str, Tensor], maps: str) -> list[str]:
    """Return the map names a probe reads: by prefix ("s", "a", "sa") or explicit names
    joined by "+" (e.g. "s1+s2"). Raises ValueError when none match."""
    if "+" in maps or maps in feats:
        names = maps.split("+")
        missing = [n for n in names if n not in feats]
        if missing:
            raise ValueError(f"maps {missing} not among the backbone's {sorted(feats)}")
        return names
    names = sorted(k for k in feats if k[0] in maps)
    if not names:
        raise ValueError(f"no map of the backbone ({sorted(feats)}) matches {maps!r}")
    return names


def stacked(feats: Mapping[str, Tensor], names: Sequence[str], size: tuple[int, int]) -> Tensor:
    """Return the maps ``names`` resized (bilinear) to ``size`` and concatenated: (B, C, h, w)."""
    resized = [
        F.interpolate(feats[n].float(), size=size, mode="bilinear", align_corners=False)
        for n in names
    ]
    return torch.cat(resized, 1)


def probe_sets(cfg: ProbeConfig, targets: Sequence[str] | None = None) -> dict[str, Any]:
    """Return {"train": source train, "source": source val, target: target val} data sets,
    after checking the probe's numbers and reading the files the probes will read."""
    check_values(cfg, what="probe")
    root = resolve_data_root(cfg.data_root)
    out = {
        "train": build_dataset(cfg.source, "train", root),
        "source": build_dataset(cfg.source, "val", root),
    }
    for t in cfg.targets if targets is None else targets:
        out[t] = build_dataset(t, "val", root)
    for name, ds in out.items():  # the images the probes read, before any work
        used = cfg.n_train if name == "train" else cfg.n_eval
        check_files(ds, range(min(len(ds), used)))
    return out


# ---------------------------------------------------------------------------------------
# The probe
# ---------------------------------------------------------------------------------------


class LinearProbe(nn.Module):
    """BatchNorm + 1x1 convolution: per-pixel linear classification of frozen maps."""

    def __init__(self, channels: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.net = nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Return logits (B, num_classes, h, w) of maps (B, C, h, w)."""
        return self.net(x)


def fit_probe(
    features: Features,
    train_set,
    cfg: ProbeConfig,
    log: Callable[[str], None] | None = None,
) -> tuple[LinearProbe, list[str]]:
    """Return (a linear probe trained on the first ``n_train`` source images, its map
    names). The maps are resized to 1/``stride`` once, and the probe is trained at that
    resolution against the labels sampled there (nearest); batches and the probe's initial
    weights come from ``cfg.seed``."""
    n = min(cfg.n_train, len(train_set))
    idx_all = list(range(n))
    names = select_maps(features.get(train_set, idx_all[:1]), cfg.maps)
    h, w = train_set[0]["image"].shape[-2:]
    size = (h // cfg.stride, w // cfg.stride)
    chunks = [idx_all[s : s + CHUNK] for s in range(0, n, CHUNK)]
    x_all = torch.cat([stacked(features.get(train_set, c), names, size) for c in chunks])
    y_all = train_set.masks(idx_all)  # (n, H, W)
    y_all = F.interpolate(y_all[:, None].float(), size=size, mode="nearest")[:, 0].long()
    torch.manual_seed(cfg.seed)
    probe = LinearProbe(x_all.shape[1])
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    g = torch.Generator().manual_seed(cfg.seed)
    probe.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
        loss = F.cross_entropy(probe(x_all[idx]), y_all[idx], ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 100 == 0:
            log(f"probe {features.name} step {step + 1}/{cfg.steps} loss {loss.item():.3f}")
    probe.eval()
    return probe, names


@torch.no_grad()
def score_probe(
    probe: LinearProbe,
    names: Sequence[str],
    features: Features,
    dataset,
    n: int,
    stride: int,
    source: str,
) -> float:
    """Return the mIoU (%) of the probe on the first ``n`` images of a labeled data set,
    over :func:`diffprompt.benchmarks.eval_classes` of a probe trained on ``source``."""
    cm = ConfusionMatrix()
    h, w = dataset[0]["image"].shape[-2:]
    n = min(n, len(dataset))
    for s in range(0, n, CHUNK):
        idx = list(range(s, min(n, s + CHUNK)))
        x = stacked(features.get(dataset, idx), names, (h // stride, w // stride))
        logits = F.interpolate(probe(x), size=(h, w), mode="bilinear", align_corners=False)
        cm.update(predicted_classes(logits), dataset.masks(idx))
    return cm.miou(eval_classes(source, dataset))


def probe_backbone(
    features: Features,
    sets: Mapping[str, Any],
    cfg: ProbeConfig,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Train one probe (seed ``cfg.seed``) and return {"source": mIoU, target: mIoU, ...,
    "target mean", "drop"} (drop = source - target mean)."""
    probe, names = fit_probe(features, sets["train"], cfg, log)
    out = {
        name: score_probe(probe, names, features, ds, cfg.n_eval, cfg.stride, cfg.source)
        for name, ds in sets.items()
        if name != "train"
    }
    target_mious = [out[t] for t in sets if t not in ("train", "source")]
    out["target mean"] = float(np.mean(target_mious)) if target_mious else float("nan")
    out["drop"] = out["source"] - out["target mean"]
    return out


# ---------------------------------------------------------------------------------------
# Label-free measures of the domain gap
# ---------------------------------------------------------------------------------------


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Return linear CKA between two representations of the same n items, (n, p) and (n, q):
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after centring the columns. 1 for X = Y and for
    any orthogonal transform (or isotropic scaling) of X; 0 for orthogonal column spaces."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    num = (y.T @ x).norm() ** 2
    den = (x.T @ x).norm() * (y.T @ y).norm()
    return float(num / den) if den > 0 else float("nan")


def mmd(a: Tensor, b: Tensor, bandwidth: float | None = None) -> float:
    """Return the unbiased squared MMD between samples a (n, d) and b (m, d) under an RBF
    kernel exp(-||u - v||^2 / (2 s^2)); s = the median pairwise distance of the pooled
    samples when ``bandwidth`` is None."""
    a, b = a.double(), b.double()
    z = torch.cat([a, b])
    d2 = torch.cdist(z, z) ** 2
    if bandwidth is None:
        off = d2[~torch.eye(len(z), dtype=torch.bool)]
        bandwidth = float(off.median().sqrt()) or 1.0
    k = torch.exp(-d2 / (2 * bandwidth**2))
    n, m = len(a), len(b)
    kaa, kbb, kab = k[:n, :n], k[n:, n:], k[:n, n:]
    saa = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    sbb = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(saa + sbb - 2 * kab.mean())


def domain_statistics(features: Features, dataset, n: int) -> dict[str, dict[str, Tensor]]:
    """Return per map: {"position": (h*w, C) mean map over images, "pooled": (n, C)}."""
    idx = list(range(min(n, len(dataset))))
    sums: dict[str, Tensor | int] = {}
    pooled: dict[str, list[Tensor]] = {}
    for s in range(0, len(idx), CHUNK):
        for k, v in features.get(dataset, idx[s : s + CHUNK]).items():
            sums[k] = sums.get(k, 0) + v.sum(0)
            pooled.setdefault(k, []).append(v.mean((2, 3)))
    return {
        k: {"position": (sums[k] / len(idx)).flatten(1).T, "pooled": torch.cat(pooled[k])}
        for k in sums
    }


def gap_measures(features: Features, sets: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    """Return, per (target, map), linear CKA between the position-wise mean maps of source and
    target and the MMD between their pooled features (label-free): rows {"target", "map",
    "CKA", "MMD"}."""
    src = domain_statistics(features, sets["source"], n)
    rows = []
    for t, ds in sets.items():
        if t in ("train", "source"):
            continue
        tgt = domain_statistics(features, ds, n)
        for k in sorted(src):
            cka = linear_cka(src[k]["position"], tgt[k]["position"])
            rows.append(
                {"target": t, "map": k, "CKA": cka, "MMD": mmd(src[k]["pooled"], tgt[k]["pooled"])}
            )
    return rows


# ---------------------------------------------------------------------------------------
# PCA of features by domain and class
# ---------------------------------------------------------------------------------------


def pca_points(
    features: Features,
    sets: Mapping[str, Any],
    map_name: str = "s1",
    images: int = 6,
    per_image: int = 300,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Return the 2-D PCA of labeled pixel features of one map from the source and each
    target (``per_image`` random pixels of each of the first ``images`` images): (points
    (N, 2), domain of each point (N,) indexing the names, trainId of each point (N,),
    names of the domains)."""
    g = torch.Generator().manual_seed(seed)
    xs, doms, cls = [], [], []
    names = [n for n in sets if n != "train"]
    for di, name in enumerate(names):
        ds = sets[name]
        idx = list(range(min(images, len(ds))))
        f = features.get(ds, idx)[map_name]  # (B, C, h, w)
        y = ds.masks(idx)
        y = F.interpolate(y[:, None].float(), size=f.shape[-2:], mode="nearest")[:, 0].long()
        v = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        lab = y.reshape(-1)
        keep = torch.nonzero(lab != IGNORE_INDEX).flatten()
        keep = keep[torch.randperm(len(keep), generator=g)[: per_image * len(idx)]]
        xs.append(v[keep])
        cls.append(lab[keep])
        doms += [di] * len(keep)
    x = torch.cat(xs).double()
    x = x - x.mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    points = (x @ v[:2].T).numpy()
    return points, np.array(doms), torch.cat(cls).numpy(), names
