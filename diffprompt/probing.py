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
between the images' globally pooled features. :func:`gap_table` puts them beside the mIoU
drop so one can check whether they predict it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffprompt.evaluate import ConfusionMatrix
from diffprompt.labels import IGNORE_INDEX, NUM_CLASSES


@dataclass
class ProbeConfig:
    """The probe and its data (a comment per default; all ours)."""

    source: str = "gta5"
    targets: tuple[str, ...] = ("cityscapes", "bdd100k", "mapillary", "acdc_fog", "acdc_night",
                                "acdc_rain", "acdc_snow", "darkzurich")  # fmt: skip
    data_root: str = "miniature"
    n_train: int = 100  # source train images the probe is fitted on
    n_eval: int = 20  # images of the source val split and of each target
    steps: int = 150  # AdamW steps of the probe
    batch_size: int = 8
    lr: float = 1e-2  # cosine decay to 0
    stride: int = 4  # maps are resized to 1/stride of the image (the probe's resolution)
    maps: str = "s"  # which maps the probe reads: "s" (decoder), "a" (class-token
    #                  cross-attention), "sa" (both); or explicit names joined by "+"
    seed: int = 0

    def __post_init__(self):
        self.targets = tuple(self.targets)


# ---------------------------------------------------------------------------------------
# Feature access
# ---------------------------------------------------------------------------------------


class Features:
    """One frozen backbone (under one context) on the probe's data sets, through the cache.

    ``backbone``: a DiffusionBackbone (with ``prompts``, giving its context) or a feature
    backbone taking images only (the comparators). ``sets`` maps names to data sets.
    """

    def __init__(self, backbone, prompts=None, cache_folder=None, name: str = ""):
        from diffprompt.cache import FeatureCache
        from diffprompt.model import SegModel

        self.name = name or getattr(backbone, "source", type(backbone).__name__)
        self.model = SegModel(backbone, nn.Identity(), prompts)
        self.cache = FeatureCache(self.model, cache_folder)

    def get(self, dataset, indices: Sequence[int]) -> dict[str, Tensor]:
        """Return {map name: (B, C, h, w)} float32 of images ``indices``."""
        return self.cache.get(dataset, indices)


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
    return torch.cat([F.interpolate(feats[n].float(), size=size, mode="bilinear",
                                    align_corners=False) for n in names], 1)  # fmt: skip


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


_MASKS: dict[tuple[int, int], Tensor] = {}


def _masks(dataset, idx: Sequence[int]) -> Tensor:
    """Labels (B, H, W) of images ``idx``, read once per data set object (uint8 in memory)."""
    for i in idx:
        if (id(dataset), i) not in _MASKS:
            _MASKS[(id(dataset), i)] = dataset[i]["mask"].to(torch.uint8)
    return torch.stack([_MASKS[(id(dataset), i)] for i in idx]).long()


def fit_probe(features: Features, train_set, cfg: ProbeConfig,
              log: Callable[[str], None] | None = None) -> tuple[LinearProbe, list[str]]:  # fmt: skip
    """Return (a linear probe trained on the first ``n_train`` source images, its map
    names). The maps are resized to 1/``stride`` once, and the probe is trained at that
    resolution against the labels sampled there (nearest); batches and the probe's initial
    weights come from ``cfg.seed``."""
    n = min(cfg.n_train, len(train_set))
    idx_all = list(range(n))
    first = features.get(train_set, idx_all[:1])
    names = select_maps(first, cfg.maps)
    h, w = train_set[0]["image"].shape[-2:]
    size = (h // cfg.stride, w // cfg.stride)
    x_all = torch.cat([stacked(features.get(train_set, idx_all[s : s + 16]), names, size)
                       for s in range(0, n, 16)])  # (n, C, h/s, w/s)  # fmt: skip
    y_all = _masks(train_set, idx_all)
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
def score_probe(probe: LinearProbe, names: Sequence[str], features: Features, dataset,
                n: int, stride: int, classes: Sequence[int] | None = None) -> float:  # fmt: skip
    """Return the mIoU (%) of the probe on the first ``n`` images of a labeled data set."""
    cm = ConfusionMatrix()
    h, w = dataset[0]["image"].shape[-2:]
    for s in range(0, min(n, len(dataset)), 16):
        idx = list(range(s, min(n, len(dataset), s + 16)))
        x = stacked(features.get(dataset, idx), names, (h // stride, w // stride))
        logits = F.interpolate(probe(x), size=(h, w), mode="bilinear", align_corners=False)
        cm.update(logits.argmax(1), _masks(dataset, idx))
    return cm.miou(classes if classes is not None else getattr(dataset, "eval_classes", None))


def probe_sets(cfg: ProbeConfig, targets: Sequence[str] | None = None) -> dict[str, Any]:
    """Return {"train": source train, "source": source val, target: target val} data sets."""
    from diffprompt.data import build_dataset
    from diffprompt.data.roots import resolve_data_root
    from diffprompt.preflight import check_fields, check_files

    check_fields(cfg, positive_int=("n_train", "n_eval", "steps", "batch_size", "stride"),
                 positive=("lr",), what="probe")  # fmt: skip
    root = resolve_data_root(cfg.data_root)
    out = {"train": build_dataset(cfg.source, "train", root),
           "source": build_dataset(cfg.source, "val", root)}  # fmt: skip
    for t in cfg.targets if targets is None else targets:
        out[t] = build_dataset(t, "val", root)
    for name, ds in out.items():  # the images the probes read, before any work
        check_files(ds, range(min(len(ds), cfg.n_train if name == "train" else cfg.n_eval)))
    return out


def probe_backbone(features: Features, sets: Mapping[str, Any], cfg: ProbeConfig,
                   log: Callable[[str], None] | None = None) -> dict[str, float]:  # fmt: skip
    """Train one probe (seed ``cfg.seed``) and return {"source": mIoU, target: mIoU, ...,
    "target mean", "drop"} (drop = source - target mean)."""
    from diffprompt.labels import SYNTHIA_EVAL_CLASSES

    classes = SYNTHIA_EVAL_CLASSES if cfg.source == "synthia" else None
    probe, names = fit_probe(features, sets["train"], cfg, log)
    out = {name: score_probe(probe, names, features, ds, cfg.n_eval, cfg.stride, classes)
           for name, ds in sets.items() if name != "train"}  # fmt: skip
    tg = [out[t] for t in sets if t not in ("train", "source")]
    out["target mean"] = float(np.mean(tg)) if tg else float("nan")
    out["drop"] = out["source"] - out["target mean"]
    return out


def mean_std(rows: Sequence[dict], by: Sequence[str]) -> pd.DataFrame:
    """Return "mean ± std" over seeds of every numeric column, grouped by ``by``."""
    df = pd.DataFrame(rows)
    num = [c for c in df.columns if c not in (*by, "seed") and pd.api.types.is_numeric_dtype(df[c])]
    g = df.groupby(list(by), sort=False)[num]
    m, s = g.mean(), g.std(ddof=1)
    out = pd.DataFrame(index=m.index)
    for c in num:
        out[c] = [f"{a:.2f} ± {b:.2f}" if not math.isnan(b) else f"{a:.2f}"
                  for a, b in zip(m[c], s[c], strict=True)]  # fmt: skip
    out["seeds"] = g.size()
    return out


# ---------------------------------------------------------------------------------------
# Backbones of the study
# ---------------------------------------------------------------------------------------

#: What each embedded backbone saw before probing (said in notebook 01).
SAW = {
    "diffusion (pretrained)": "unlabeled images and captions of every domain's training split (denoising)",
    "supervised": "source labels only (end to end, from random weights)",
    "supervised + photometric": "source labels only, with colour jitter, blur and noise",
    "random": "nothing (random weights)",
}  # fmt: skip


def embedded_backbones(model: str = "toy-sd", supervised_steps: int = 80,
                       supervised_batch: int = 4, data_root: str = "miniature", seed: int = 0,
                       supervised_crop: tuple[int, int] | None = (64, 128),
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Return the embedded study's backbones, {name: DiffusionBackbone}: the pretrained UNet,
    the same architecture trained supervised on the source (without and with photometric
    augmentation) and with random weights; all share the pretrained VAE and text encoder."""
    from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
    from diffprompt.backbones.variants import SupervisedConfig, random_unet, train_supervised
    from diffprompt.data import build_dataset
    from diffprompt.data.roots import resolve_data_root

    bb = DiffusionBackbone.from_pretrained(model, FeatureConfig())
    train = build_dataset("gta5", "train", resolve_data_root(data_root))
    out = {"diffusion (pretrained)": bb}
    for name, photometric in (("supervised", False), ("supervised + photometric", True)):
        cfg = SupervisedConfig(steps=supervised_steps, batch_size=supervised_batch, seed=seed,
                               photometric=photometric,
                               crop=tuple(supervised_crop) if supervised_crop else None)  # fmt: skip
        out[name], _ = train_supervised(bb, train, cfg, log)
    out["random"] = random_unet(bb, seed)
    return out


def real_backbone(name: str, dtype: str = "fp32", device: str = "auto"):
    """Return a backbone from a hub id or folder: a Stable Diffusion checkpoint (a folder
    with ``unet/``, or a hub id naming "diffusion") as a DiffusionBackbone, anything else
    (ResNet, ConvNeXt, Swin, DINOv2, CLIP) as a comparator."""
    from pathlib import Path

    from diffprompt.backbones.comparators import build_comparator
    from diffprompt.backbones.diffusion import DiffusionBackbone

    path = Path(name).expanduser()
    is_sd = (path / "unet").is_dir() if path.is_dir() else "diffusion" in name.lower()
    if is_sd:
        return DiffusionBackbone.from_pretrained(name, dtype=dtype, device=device)
    return build_comparator(name, dtype=dtype, device=device)


def with_features(bb, **changes):
    """Return a view of a DiffusionBackbone with other feature settings (timesteps, noise,
    attention tokens, ...) sharing its modules and hooks. ``blocks`` cannot change (hooks
    are installed for them): select maps instead."""
    if "blocks" in changes:
        raise ValueError("blocks are fixed when the hooks are installed: select maps instead")
    view = copy.copy(bb)
    view.cfg = dataclasses.replace(bb.cfg, **changes)
    return view


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
    out: dict[str, dict[str, list]] = {}
    for s in range(0, len(idx), 16):
        f = features.get(dataset, idx[s : s + 16])
        for k, v in f.items():
            d = out.setdefault(k, {"sum": 0, "pooled": []})
            d["sum"] = d["sum"] + v.sum(0)
            d["pooled"].append(v.mean((2, 3)))
    return {k: {"position": (d["sum"] / len(idx)).flatten(1).T, "pooled": torch.cat(d["pooled"])}
            for k, d in out.items()}  # fmt: skip


def gap_measures(features: Features, sets: Mapping[str, Any], n: int) -> pd.DataFrame:
    """Return, per (target, map), linear CKA between the position-wise mean maps of source and
    target and the MMD between their pooled features (label-free)."""
    src = domain_statistics(features, sets["source"], n)
    rows = []
    for t, ds in sets.items():
        if t in ("train", "source"):
            continue
        tgt = domain_statistics(features, ds, n)
        for k in sorted(src):
            rows.append({"target": t, "map": k,
                         "CKA": linear_cka(src[k]["position"], tgt[k]["position"]),
                         "MMD": mmd(src[k]["pooled"], tgt[k]["pooled"])})  # fmt: skip
    return pd.DataFrame(rows)


def gap_table(gaps: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """Join the measures (averaged over maps) with the mIoU drop of each (backbone, target):
    drop = source mIoU - target mIoU of the probe (mean over seeds)."""
    g = gaps.groupby(["backbone", "target"], sort=False)[["CKA", "MMD"]].mean().reset_index()
    rows = []
    for bname, part in probes.groupby("backbone", sort=False):
        m = part.drop(columns=["seed"], errors="ignore").mean(numeric_only=True)
        for t in g.loc[g["backbone"] == bname, "target"]:
            rows.append({"backbone": bname, "target": t, "drop": m["source"] - m[t]})
    return g.merge(pd.DataFrame(rows), on=["backbone", "target"])


def correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Return Pearson and Spearman correlations of 1 - CKA and MMD with the mIoU drop."""
    from scipy.stats import pearsonr, spearmanr

    out = {}
    for name, x in (("1 - CKA", 1 - table["CKA"]), ("MMD", table["MMD"])):
        if len(table) >= 3 and x.std() > 0 and table["drop"].std() > 0:
            out[name] = {"pearson r": pearsonr(x, table["drop"])[0],
                         "spearman rho": spearmanr(x, table["drop"])[0], "pairs": len(table)}  # fmt: skip
        else:
            out[name] = {
                "pearson r": float("nan"),
                "spearman rho": float("nan"),
                "pairs": len(table),
            }
    return pd.DataFrame(out).T


def gap_scatter(table: pd.DataFrame):
    """Return scatter plots of the mIoU drop against 1 - CKA and MMD, one colour per backbone."""
    import matplotlib.pyplot as plt

    corr = correlations(table)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (name, x) in zip(axes, (("1 - CKA", 1 - table["CKA"]), ("MMD", table["MMD"])),
                             strict=True):  # fmt: skip
        for i, (b, part) in enumerate(table.groupby("backbone", sort=False)):
            ax.scatter(x[part.index], part["drop"], s=18, color=f"C{i}", label=b)
        r = corr.loc[name, "pearson r"]
        ax.set(xlabel=f"{name} (source vs target features)", ylabel="mIoU drop (source - target)",
               title=f"{name}: Pearson r = {r:.2f}")  # fmt: skip
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# PCA of features by domain and class
# ---------------------------------------------------------------------------------------


def pca_figure(features: Features, sets: Mapping[str, Any], map_name: str = "s1",
               images: int = 6, per_image: int = 300, seed: int = 0):  # fmt: skip
    """Return a figure: the 2-D PCA of pixel features of one map from the source and each
    target, coloured by domain (left) and by class (right, the Cityscapes palette)."""
    import matplotlib.pyplot as plt

    from diffprompt.labels import CLASSES, PALETTE

    g = torch.Generator().manual_seed(seed)
    xs, doms, cls = [], [], []
    names = [n for n in sets if n != "train"]
    for di, name in enumerate(names):
        ds = sets[name]
        idx = list(range(min(images, len(ds))))
        f = features.get(ds, idx)[map_name]  # (B, C, h, w)
        y = _masks(ds, idx)
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
    p = (x @ v[:2].T).numpy()
    doms, cls = np.array(doms), torch.cat(cls).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for di, name in enumerate(names):
        m = doms == di
        axes[0].scatter(p[m, 0], p[m, 1], s=2, alpha=0.4, color=f"C{di % 10}", label=name)
    axes[0].legend(fontsize=7, markerscale=5)
    axes[0].set_title(f"{features.name}, map {map_name}: by domain", fontsize=9)
    axes[1].scatter(p[:, 0], p[:, 1], s=2, alpha=0.4, c=PALETTE[cls] / 255.0)
    present = sorted(set(cls.tolist()))
    for c in present:
        axes[1].scatter([], [], s=12, color=PALETTE[c] / 255.0, label=CLASSES[c])
    axes[1].legend(fontsize=6, ncol=2, markerscale=1.5)
    axes[1].set_title("by class", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def sweep_figure(sweeps: pd.DataFrame):
    """Return one panel per sweep: source and target-mean mIoU against the swept value."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(sweeps["sweep"]))
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        part = sweeps[sweeps["sweep"] == name]
        for col, style in (("source", "-o"), ("target mean", "-s")):
            ax.plot(part["value"].astype(str), part[col], style, ms=4, label=col)
        ax.set_title(name, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
        ax.set_ylabel("mIoU (%)")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------
# The study: every backbone x seed, the sweeps, the gap measures
# ---------------------------------------------------------------------------------------


def features_of(bb, name: str, cache_folder=None, mode: str = "scene") -> Features:
    """Return :class:`Features` of a backbone: a diffusion backbone under the prompt
    ``mode`` ("scene": [category tokens ; the default scene prompt], "null": the empty
    prompt; no adapter), a comparator on images alone."""
    from diffprompt.labels import CLASSES
    from diffprompt.prompts import PromptConfig, Prompts

    prompts = None
    if hasattr(bb, "text_encoder"):
        prompts = Prompts(
            bb.text_encoder, bb.tokenizer, CLASSES, PromptConfig(mode=mode, adapter=False)
        )
    return Features(bb, prompts, cache_folder, name)


def probe_all(features: Mapping[str, Features], sets: Mapping[str, Any], cfg: ProbeConfig,
              seeds: Sequence[int], log: Callable[[str], None] | None = None) -> pd.DataFrame:  # fmt: skip
    """Return one row per (backbone, seed): the probe's mIoU on the source val split and
    every target, the target mean and the drop."""
    rows = []
    for name, f in features.items():
        for seed in seeds:
            r = probe_backbone(f, sets, dataclasses.replace(cfg, seed=int(seed)))
            rows.append({"backbone": name, "seed": int(seed), **r})
            if log:
                log(f"{name} seed {seed}: source {r['source']:.2f}, target mean "
                    f"{r['target mean']:.2f}")  # fmt: skip
    return pd.DataFrame(rows)


def run_sweeps(bb, sets: Mapping[str, Any], cfg: ProbeConfig, timesteps: Sequence[int],
               noise_timesteps: Sequence[int], cache_folder=None,
               log: Callable[[str], None] | None = None) -> pd.DataFrame:  # fmt: skip
    """Return the probe's mIoU for each swept setting of a diffusion backbone (one seed):
    timestep without noise, timestep with noise, decoder block, with or without text, and
    decoder maps / class-token cross-attention maps / both."""
    from diffprompt.labels import NUM_CLASSES as C

    rows = []

    def one(sweep: str, value, f: Features, maps: str = "s") -> None:
        r = probe_backbone(f, sets, dataclasses.replace(cfg, maps=maps))
        rows.append({"sweep": sweep, "value": value, **r})
        if log:
            log(
                f"sweep {sweep} = {value}: source {r['source']:.2f}, target mean {r['target mean']:.2f}"
            )

    base = features_of(bb, "base", cache_folder)
    for t in timesteps:
        one("timestep (no noise)", t, features_of(with_features(bb, timesteps=(int(t),), noise=False),
                                                  f"t={t}", cache_folder))  # fmt: skip
    for t in noise_timesteps:
        one("timestep (noised)", t, features_of(with_features(bb, timesteps=(int(t),), noise=True),
                                                f"t={t}+noise", cache_folder))  # fmt: skip
    for k in sorted(base.get(sets["train"], [0])):
        one("decoder block", k, base, k)
    one("decoder block", "all", base, "s")
    one("text", "scene prompt", base)
    one("text", "empty prompt", features_of(bb, "null", cache_folder, mode="null"))
    att = features_of(with_features(bb, attention_tokens=C), "attention", cache_folder)
    for maps, label in (("s", "decoder maps"), ("a", "cross-attention maps"), ("sa", "both")):
        one("features", label, att, maps)
    return pd.DataFrame(rows)


def gap_study(features: Mapping[str, Features], sets: Mapping[str, Any], n: int) -> pd.DataFrame:
    """Return the CKA and MMD of every (backbone, target, map)."""
    parts = []
    for name, f in features.items():
        g = gap_measures(f, sets, n)
        g.insert(0, "backbone", name)
        parts.append(g)
    return pd.concat(parts, ignore_index=True)
