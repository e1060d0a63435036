"""The losses of DG training, and the entropy test-time adaptation minimises.

DG training: for K predictions of one batch (one per scene prompt),

    mean over the K prompts of cross-entropy  +  lambda * consistency(the K predictions)

with consistency the Jensen-Shannon divergence of the K predicted distributions (or their
mean pairwise symmetric KL), so the head learns to rely on what does not change when the
described scene does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from diffprompt.dg.config import CONSISTENCY_KINDS
from diffprompt.labels import IGNORE_INDEX


def entropy(p: Tensor, dim: int, logp: Tensor | None = None) -> Tensor:
    """Return the Shannon entropy (nats) of the distributions ``p`` along ``dim``:
    ``-sum p log p``. ``logp``: their logarithms when known exactly (a log-softmax), else
    ``log(max(p, 1e-12))``."""
    if logp is None:
        logp = p.clamp_min(1e-12).log()
    return -(p * logp).sum(dim)


def mean_entropy(logits: Tensor) -> Tensor:
    """Return the mean per-pixel entropy (nats) of softmax(logits), logits (B, C, H, W):
    test-time adaptation's "entropy" objective and TENT's loss."""
    logp = logits.float().log_softmax(1)
    return entropy(logp.exp(), 1, logp).mean()


def consistency_loss(logits: Tensor, kind: str = "js", valid: Tensor | None = None) -> Tensor:
    """Return the disagreement of K predictions, averaged over pixels.

    ``logits`` (K, B, C, H, W); ``kind``: ``"js"``, the generalized Jensen-Shannon
    divergence H(mean_k p_k) - mean_k H(p_k), or ``"sym_kl"``, the mean over pairs i < j of
    KL(p_i || p_j) + KL(p_j || p_i). ``valid`` (B, H, W) bool restricts the average to some
    pixels (all by default). Zero when the K predictions are identical, positive otherwise;
    zero for K = 1.
    """
    if kind not in CONSISTENCY_KINDS:
        raise ValueError(f"unknown consistency {kind!r}; choose one of {CONSISTENCY_KINDS}")
    k = logits.shape[0]
    if k < 2:
        return logits.sum() * 0.0
    logp = logits.float().log_softmax(2)  # (K, B, C, H, W)
    p = logp.exp()
    if kind == "js":
        per_pixel = entropy(p.mean(0), 1) - entropy(p, 2).mean(0)  # (B, H, W)
    else:
        terms = []
        for i in range(k):
            for j in range(i + 1, k):
                log_ratio = logp[i] - logp[j]
                terms.append(((p[i] - p[j]) * log_ratio).sum(1))  # KL(i||j) + KL(j||i)
        per_pixel = torch.stack(terms).mean(0)
    if valid is not None:
        v = valid.to(per_pixel.dtype)
        return (per_pixel * v).sum() / v.sum().clamp_min(1.0)
    return per_pixel.mean()


def dg_loss(
    logits: Tensor,
    target: Tensor,
    weight: float = 0.0,
    kind: str = "js",
    class_weight: Tensor | None = None,
    ce_denominator: Tensor | float | None = None,
) -> dict[str, Tensor]:
    """Return {"loss", "ce", "consistency"} of K predictions of one batch.

    ``logits`` (K, B, C, h, w), at the head's resolution or the labels'; ``target`` (B, H, W)
    trainIds. The cross-entropy of each prediction, upsampled (bilinear) to the labels,
    averaged over the K prompts, plus ``weight`` times :func:`consistency_loss` of the K
    predictions at their own resolution (reported also when ``weight`` is 0). K = 1 and
    weight 0 is plain cross-entropy. The cross-entropy is a mean over the batch's labeled
    pixels, or, with ``ce_denominator``, their sum divided by it (several processes divide
    by the global count over the number of processes, so that averaging their gradients
    gives the gradient of one process holding the whole batch).
    """
    k = logits.shape[0]
    size = tuple(target.shape[-2:])
    reduction = "mean" if ce_denominator is None else "sum"
    ce = []
    for i in range(k):
        li = logits[i].float()
        if tuple(li.shape[-2:]) != size:
            li = F.interpolate(li, size=size, mode="bilinear", align_corners=False)
        ce_i = F.cross_entropy(
            li, target, weight=class_weight, ignore_index=IGNORE_INDEX, reduction=reduction
        )
        ce.append(ce_i if ce_denominator is None else ce_i / ce_denominator)
    ce = torch.stack(ce).mean()
    # measured whenever K > 1 (also with weight 0: how much the K predictions disagree)
    cons = consistency_loss(logits, kind) if k > 1 else ce.new_zeros(())
    return {"loss": ce + weight * cons, "ce": ce, "consistency": cons}
