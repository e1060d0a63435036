"""Notebook 01: the backbones of the study, probes over seeds, the sweeps on the diffusion
backbone, and the label-free gap measures against the mIoU drop (tables)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from scipy.stats import pearsonr, spearmanr

from diffprompt.backbones.comparators import build_comparator
from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.backbones.variants import random_unet
from diffprompt.data import build_dataset
from diffprompt.data.roots import resolve_data_root
from diffprompt.labels import NUM_CLASSES
from diffprompt.parameters import config_of
from diffprompt.probing import (
    Features,
    ProbeConfig,
    features_of,
    gap_measures,
    pca_points,
    probe_backbone,
    with_features,
)
from diffprompt.runtime import resolve_device
from diffprompt.supervised import SupervisedConfig, train_supervised
from diffprompt.viz import pca_figure as draw_pca

#: What each embedded backbone saw before probing (said in notebook 01).
SAW = {
    "diffusion (pretrained)": (
        "unlabeled images and captions of every domain's training split (denoising)"
    ),
    "supervised": "source labels only (end to end, from random weights)",
    "supervised + photometric": "source labels only, with colour jitter, blur and noise",
    "random": "nothing (random weights)",
}


def probe_config(params: Mapping[str, Any]) -> ProbeConfig:
    """Return the ProbeConfig of notebook 01's parameters (its seed: the first of
    ``seeds``)."""
    return config_of(ProbeConfig, params, seed=params["seeds"][0])


# ---------------------------------------------------------------------------------------
# The backbones of the study
# ---------------------------------------------------------------------------------------


def embedded_backbones(
    model: str = "toy-sd",
    supervised_steps: int = 80,
    supervised_batch: int = 4,
    data_root: str = "miniature",
    seed: int = 0,
    supervised_crop: tuple[int, int] | None = (64, 128),
    log: Callable[[str], None] | None = None,
    device: str = "auto",
) -> dict[str, DiffusionBackbone]:
    """Return the embedded study's backbones, {name: DiffusionBackbone} on ``device``: the
    pretrained UNet, the same architecture trained supervised on the source (without and
    with photometric augmentation) and with random weights; all share the pretrained VAE
    and text encoder."""
    bb = DiffusionBackbone.from_pretrained(model, FeatureConfig(), device=resolve_device(device))
    train = build_dataset("gta5", "train", resolve_data_root(data_root))
    out = {"diffusion (pretrained)": bb}
    crop = tuple(supervised_crop) if supervised_crop else None
    for name, photometric in (("supervised", False), ("supervised + photometric", True)):
        cfg = SupervisedConfig(
            steps=supervised_steps,
            batch_size=supervised_batch,
            seed=seed,
            photometric=photometric,
            crop=crop,
        )
        out[name], _ = train_supervised(bb, train, cfg, log)
    out["random"] = random_unet(bb, seed)
    return out


def real_backbone(name: str, dtype: str = "fp32", device: str = "auto"):
    """Return a backbone from a hub id or folder: a Stable Diffusion checkpoint (a folder
    with ``unet/``, or a hub id naming "diffusion") as a DiffusionBackbone, anything else
    (ResNet, ConvNeXt, Swin, DINOv2, CLIP) as a comparator."""
    path = Path(name).expanduser()
    is_sd = (path / "unet").is_dir() if path.is_dir() else "diffusion" in name.lower()
    if is_sd:
        return DiffusionBackbone.from_pretrained(name, dtype=dtype, device=device)
    return build_comparator(name, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------
# Probes, sweeps, gap measures
# ---------------------------------------------------------------------------------------


def probe_all(
    features: Mapping[str, Features],
    sets: Mapping[str, Any],
    cfg: ProbeConfig,
    seeds: Sequence[int],
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Return one row per (backbone, seed): the probe's mIoU on the source val split and
    every target, the target mean and the drop."""
    rows = []
    for name, f in features.items():
        for seed in seeds:
            r = probe_backbone(f, sets, dataclasses.replace(cfg, seed=int(seed)))
            rows.append({"backbone": name, "seed": int(seed), **r})
            if log:
                log(
                    f"{name} seed {seed}: source {r['source']:.2f}, target mean "
                    f"{r['target mean']:.2f}"
                )
    return pd.DataFrame(rows)


def run_sweeps(
    bb,
    sets: Mapping[str, Any],
    cfg: ProbeConfig,
    timesteps: Sequence[int],
    noise_timesteps: Sequence[int],
    cache_folder=None,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Return the probe's mIoU for each swept setting of a diffusion backbone (one seed):
    timestep without noise, timestep with noise, decoder block, with or without text, and
    decoder maps / class-token cross-attention maps / both."""
    rows = []

    def one(sweep: str, value, f: Features, maps: str = "s") -> None:
        r = probe_backbone(f, sets, dataclasses.replace(cfg, maps=maps))
        rows.append({"sweep": sweep, "value": value, **r})
        if log:
            log(
                f"sweep {sweep} = {value}: source {r['source']:.2f}, "
                f"target mean {r['target mean']:.2f}"
            )

    def at(t: int, noise: bool, name: str) -> Features:
        view = with_features(bb, timesteps=(int(t),), noise=noise)
        return features_of(view, name, cache_folder)

    base = features_of(bb, "base", cache_folder)
    for t in timesteps:
        one("timestep (no noise)", t, at(t, False, f"t={t}"))
    for t in noise_timesteps:
        one("timestep (noised)", t, at(t, True, f"t={t}+noise"))
    for k in sorted(base.get(sets["train"], [0])):
        one("decoder block", k, base, k)
    one("decoder block", "all", base, "s")
    one("text", "scene prompt", base)
    one("text", "empty prompt", features_of(bb, "null", cache_folder, tokens="null"))
    attention = with_features(bb, attention_tokens=NUM_CLASSES)
    att = features_of(attention, "attention", cache_folder)
    for maps, label in (("s", "decoder maps"), ("a", "cross-attention maps"), ("sa", "both")):
        one("features", label, att, maps)
    return pd.DataFrame(rows)


def gap_study(features: Mapping[str, Features], sets: Mapping[str, Any], n: int) -> pd.DataFrame:
    """Return the CKA and MMD of every (backbone, target, map)."""
    parts = []
    for name, f in features.items():
        g = pd.DataFrame(gap_measures(f, sets, n))
        g.insert(0, "backbone", name)
        parts.append(g)
    return pd.concat(parts, ignore_index=True)


def gap_table(gaps: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    """Join the measures (averaged over maps) with the mIoU drop of each (backbone, target):
    drop = source mIoU - target mIoU of the probe (mean over seeds)."""
    by_target = gaps.groupby(["backbone", "target"], sort=False)[["CKA", "MMD"]]
    g = by_target.mean().reset_index()
    rows = []
    for bname, part in probes.groupby("backbone", sort=False):
        m = part.drop(columns=["seed"], errors="ignore").mean(numeric_only=True)
        for t in g.loc[g["backbone"] == bname, "target"]:
            rows.append({"backbone": bname, "target": t, "drop": m["source"] - m[t]})
    return g.merge(pd.DataFrame(rows), on=["backbone", "target"])


def correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Return Pearson and Spearman correlations of 1 - CKA and MMD with the mIoU drop."""
    out = {}
    for name, x in (("1 - CKA", 1 - table["CKA"]), ("MMD", table["MMD"])):
        if len(table) >= 3 and x.std() > 0 and table["drop"].std() > 0:
            out[name] = {
                "pearson r": pearsonr(x, table["drop"])[0],
                "spearman rho": spearmanr(x, table["drop"])[0],
                "pairs": len(table),
            }
        else:
            out[name] = {
                "pearson r": float("nan"),
                "spearman rho": float("nan"),
                "pairs": len(table),
            }
    return pd.DataFrame(out).T


def pca_figure(features: Features, sets: Mapping[str, Any], map_name: str = "s1", **kw):
    """Return the figure of the 2-D PCA of one map's pixel features from the source and each
    target (:func:`diffprompt.probing.pca_points`; ``kw``: its images, per_image, seed),
    coloured by domain and by class."""
    points, domains, classes, names = pca_points(features, sets, map_name, **kw)
    return draw_pca(points, domains, classes, names, f"{features.name}, map {map_name}")
