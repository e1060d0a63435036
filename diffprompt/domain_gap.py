"""A measured domain gap: a small CNN trained on one domain and tested on others.

This is the sanity check of the miniature: a segmentation CNN trained on miniature GTA5
must lose clearly on miniature Cityscapes against the same CNN trained on Cityscapes,
adverse conditions must cost more again, and every target must stay learnable from its own
labels. :func:`run_domain_gap` trains the CNNs and returns their mIoU per target;
:mod:`diffprompt.experiments.data` makes the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from diffprompt.benchmarks import GROUPS, eval_classes
from diffprompt.data import DatasetError, build_dataset
from diffprompt.evaluate import ConfusionMatrix, predicted_classes
from diffprompt.labels import IGNORE_INDEX, NUM_CLASSES
from diffprompt.preflight import check_files, check_values
from diffprompt.runtime import resolve_device
from diffprompt.settings import setting


def _block(cin: int, cout: int, stride: int = 1, dil: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, padding=dil * (k // 2), dilation=dil, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallSegNet(nn.Module):
    """A tiny CNN (about 0.14 M parameters at width 32) for 19-class segmentation.

    Full-resolution input is brought to 1/4 by two strided convolutions, processed at 1/4
    and (dilated) 1/8, fused at 1/4, and returned at full resolution through a
    pixel shuffle, so thin classes survive while the cost stays low on a CPU.
    Input (B, 3, H, W) with H, W divisible by 8; output (B, 19, H, W) logits.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 32):
        super().__init__()
        w = width
        self.stem = nn.Sequential(_block(3, w // 2, 2), _block(w // 2, w, 2))  # 1/4
        self.s4 = nn.Sequential(_block(w, w), _block(w, w))
        self.s8 = nn.Sequential(
            _block(w, 2 * w, 2), _block(2 * w, 2 * w, dil=2), _block(2 * w, 2 * w, dil=4)
        )  # 1/8
        self.fuse = _block(3 * w, w, k=1)
        self.refine = _block(w, w)
        self.head = nn.Conv2d(w, num_classes * 16, 1)
        self.up = nn.PixelShuffle(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.s4(self.stem(x))  # (B, w, H/4, W/4)
        b = self.s8(a)  # (B, 2w, H/8, W/8)
        b = F.interpolate(b, size=a.shape[-2:], mode="bilinear")
        f = self.refine(self.fuse(torch.cat([a, b], 1)))  # (B, w, H/4, W/4)
        return self.up(self.head(f))  # (B, 19, H, W)


@dataclass
class GapConfig:
    """Training recipe of the small CNN (the same for every domain)."""

    steps: int = setting(1000, "optimisation steps", range=">= 1")
    batch_size: int = setting(8, "images per step", range=">= 1")
    lr: float = setting(2e-3, "AdamW, cosine decay to 0", range="> 0")
    weight_decay: float = setting(1e-4, "AdamW", range=">= 0")
    input_scale: float = setting(
        1.0, "images are resized by this factor (1 = as stored)", range="> 0"
    )
    width: int = setting(32, "channel width of SmallSegNet", range=">= 1")
    class_balance: float = setting(
        0.5, "loss weight of a class = frequency ** -class_balance (0 = off)", range=">= 0"
    )
    seed: int = setting(0, "the CNN's init and batches", range=">= 0")
    threads: int = setting(2, "CPU threads of torch", range=">= 1")
    device: str = setting("auto", "where the CNNs train: auto (CUDA if present), cpu, cuda, ...")


def _normalise(img: torch.Tensor) -> torch.Tensor:
    return (img - 0.45) / 0.25


def _prepare(batch: dict, scale: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    x = _normalise(batch["image"].float().to(device))
    if scale != 1.0:
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True)
    return x, batch["mask"].long().to(device)


def train_cnn(
    train_set: Dataset, cfg: GapConfig, log: Callable[[str], None] | None = None
) -> SmallSegNet:
    """Return a SmallSegNet trained on ``train_set`` (samples with image and mask)."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    dev = resolve_device(cfg.device)
    model = SmallSegNet(width=cfg.width).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    weight = class_weights(train_set, cfg.class_balance).to(dev) if cfg.class_balance else None
    drop_last = len(train_set) > cfg.batch_size
    loader = DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=True, generator=g, drop_last=drop_last
    )
    step = 0
    model.train()
    while step < cfg.steps:
        for batch in loader:
            x, y = _prepare(batch, cfg.input_scale, dev)
            if torch.rand((), generator=g) < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            logits = model(x)
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear")
            loss = F.cross_entropy(logits, y, weight=weight, ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if log and (step % 100 == 0 or step == cfg.steps):
                log(f"step {step}/{cfg.steps} loss {loss.item():.3f}")
            if step >= cfg.steps:
                break
    return model


def class_weights(dataset: Dataset, power: float, max_images: int = 200) -> torch.Tensor:
    """Return (19,) loss weights ``freq ** -power`` from the label histogram, mean 1.

    Classes absent from the data set get weight 0. Counted on at most ``max_images``.
    """
    counts = torch.zeros(NUM_CLASSES, dtype=torch.float64)
    for i in range(min(len(dataset), max_images)):
        m = dataset[i]["mask"].reshape(-1)
        counts += torch.bincount(m[m != IGNORE_INDEX], minlength=NUM_CLASSES)[:NUM_CLASSES]
    freq = counts / counts.sum().clamp(min=1)
    w = torch.where(freq > 0, freq.clamp(min=1e-6) ** -power, torch.zeros_like(freq))
    return (w / w[freq > 0].mean()).float()


@torch.no_grad()
def evaluate_cnn(
    model: nn.Module, dataset: Dataset, cfg: GapConfig, classes: Sequence[int] | None = None
) -> tuple[float, np.ndarray]:
    """Return (mIoU in percent, per-class IoU) of ``model`` on a labeled data set."""
    model.eval()
    dev = next(model.parameters()).device
    cm = ConfusionMatrix()
    for batch in DataLoader(dataset, batch_size=16):
        x, y = _prepare(batch, cfg.input_scale, dev)
        logits = F.interpolate(model(x), size=y.shape[-2:], mode="bilinear")
        cm.update(predicted_classes(logits).cpu(), y.cpu())
    return cm.miou(classes), cm.iou()


# ---------------------------------------------------------------------------------------
# The experiment on registry data sets
# ---------------------------------------------------------------------------------------


def subset(ds: Dataset, max_images: int, offset: int = 0) -> Dataset:
    """Return images ``offset ..`` of ``ds``, at most ``max_images`` of them (0 = all)."""
    n = len(ds) - offset
    if max_images and max_images < n:
        n = max_images
    return Subset(ds, range(offset, offset + n)) if (offset or n < len(ds)) else ds


def base_dataset(ds: Dataset) -> Dataset:
    """Return the data set under (nested) subsets."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def target_splits(name: str, root) -> tuple[Dataset, Dataset, str]:
    """Return (train set, evaluation set, protocol note) of a target's own labels.

    Targets with a labeled train split train on it and evaluate on "val". Targets whose
    only labeled split is "val" (Dark Zurich) train on its first half, evaluate on the rest.
    """
    try:
        train = build_dataset(name, "train", root)
        labeled = train.labeled
    except DatasetError:
        labeled = False
    val = build_dataset(name, "val", root)
    if labeled:
        return train, val, "own train -> val"
    half = len(val) // 2
    return (
        Subset(val, range(half)),
        Subset(val, range(half, len(val))),
        "val first half -> second half",
    )


def run_domain_gap(
    root,
    source: str,
    targets: Sequence[str],
    cfg: GapConfig,
    max_images: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the small CNN on ``source`` and on each target; return {"rows": one per target
    (source-trained mIoU, target-trained mIoU, the drop between them, the numbers of
    train/eval images, the protocol), "source_in_domain": the source-trained CNN's mIoU on
    the source's own held-out split, "checks": :func:`gap_checks`}."""
    check_values(cfg, what="domain gap")
    say = log or (lambda s: None)
    say(f"device: {resolve_device(cfg.device)}")  # fails here if the device is absent
    src_train = build_dataset(source, "train", root)
    src_eval = build_dataset(source, "val", root)
    splits = {name: target_splits(name, root) for name in targets}  # every set before any work
    for ds in (src_train, src_eval, *(d for t in splits.values() for d in t[:2])):
        check_files(subset(ds, max_images))
    torch.set_num_threads(cfg.threads)
    say(f"training on {source} ({len(src_train)} images)")
    src_model = train_cnn(subset(src_train, max_images), cfg, log)
    classes = eval_classes(source, src_eval)
    in_domain, _ = evaluate_cnn(src_model, subset(src_eval, max_images), cfg, classes)
    rows = []
    for name in targets:
        train, evaluation, note = splits[name]
        train, evaluation = subset(train, max_images), subset(evaluation, max_images)
        classes = eval_classes(source, base_dataset(evaluation))
        src_miou, _ = evaluate_cnn(src_model, evaluation, cfg, classes)
        say(f"training on {name} ({len(train)} images, {note})")
        own = train_cnn(train, cfg, log)
        own_miou, _ = evaluate_cnn(own, evaluation, cfg, classes)
        rows.append(
            {
                "target": name,
                "source-trained": src_miou,
                "target-trained": own_miou,
                "drop": own_miou - src_miou,
                "train images": len(train),
                "eval images": len(evaluation),
                "protocol": note,
            }
        )
        say(f"{name}: source-trained {src_miou:.1f}, target-trained {own_miou:.1f}")
    return {"rows": rows, "source_in_domain": in_domain, "checks": gap_checks(rows)}


def gap_checks(
    rows: Sequence[dict[str, Any]], min_gap: float = 15.0, min_own: float = 50.0
) -> dict[str, bool]:
    """Return the miniature's acceptance checks on the rows of :func:`run_domain_gap`.

    ``cityscapes_gap``: source-trained loses at least ``min_gap`` mIoU on Cityscapes
    against target-trained; ``adverse_costs_more``: the source-trained CNN scores lower on
    every adverse target than on Cityscapes; ``learnable``: every target-trained CNN
    reaches ``min_own``.
    """
    by_target = {r["target"]: r for r in rows}
    checks = {}
    if "cityscapes" in by_target:
        cs = by_target["cityscapes"]
        checks["cityscapes_gap"] = bool(cs["drop"] >= min_gap)
        adverse = [t for t in GROUPS["adverse"] if t in by_target]
        if adverse:
            lower = [by_target[t]["source-trained"] < cs["source-trained"] for t in adverse]
            checks["adverse_costs_more"] = bool(all(lower))
    checks["learnable"] = bool(all(r["target-trained"] >= min_own for r in rows))
    return checks


#: Bump when the experiment's code changes its numbers (invalidates reused tables).
EXPERIMENT_VERSION = 1


def experiment_key(
    root, source: str, targets: Sequence[str], cfg: GapConfig, max_images: int
) -> dict:
    """Return what identifies a domain-gap run: code version, recipe and data.

    For the miniature the data is identified by its generator stamp (version + parameters);
    for a real data root by its path.
    """
    stamp_file = Path(root) / "toyworld.json"
    if stamp_file.is_file():
        stamp = json.loads(stamp_file.read_text())
        data = {k: v for k, v in stamp.items() if k not in ("images", "seconds")}
    else:
        data = {"root": str(Path(root).resolve())}
    return {
        "experiment_version": EXPERIMENT_VERSION,
        "source": source,
        "targets": list(targets),
        "recipe": asdict(cfg),
        "max_images": max_images,
        "data": data,
    }
