"""How much a toy model's text reaches its features: the measures a candidate recipe is
judged by (issue "an embedded model whose text matters").

:func:`text_use` gathers, for one model, on held-out GTA5 / Cityscapes val images:

- prompt sensitivity (:func:`prompt_sensitivity`): the relative L2 change of the UNet's
  feature maps between scene prompts, and between a scene prompt and the empty prompt, at
  t = 1 (the features' timestep), 200 and 400 (same images, same noise);
- class-word binding: the mIoU of the argmax over the 19 class words' cross-attention maps
  (:func:`~diffprompt.toysd.eval.class_word_attention`, best of t = 1 and 200);
- the caption-vs-empty loss gap at t <= 600
  (:func:`~diffprompt.toysd.eval.text_usage_by_timestep`);
- the linear probe (:func:`~diffprompt.toysd.eval.probe`, GTA5 train -> val).

:func:`meets_the_bar` says whether a candidate may replace the shipped model: binding >=
:data:`MIN_BINDING` or scene-prompt sensitivity at t = 1 >= :data:`MIN_SENSITIVITY`, with
the probe within :data:`MAX_PROBE_LOSS` points of the shipped model's. A model trained with
padding masked in cross-attention (``mask_padding`` in its recipe) is read with its
prompts trimmed to BOS..EOS, which is the same attention.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from itertools import permutations
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.data import build_dataset
from diffprompt.prompts import sample_scene_prompts
from diffprompt.text import encode_scene
from diffprompt.toysd.eval import (
    SOURCE,
    _stack,
    class_word_attention,
    masks_padding,
    probe,
    text_usage_by_timestep,
)

#: What a candidate must reach (one of the first two) to replace the shipped model.
MIN_BINDING = 25.0  # class-word attention argmax mIoU, GTA5 val
MIN_SENSITIVITY = 25.0  # scene prompt vs scene prompt, % relative L2 at t = 1
MAX_PROBE_LOSS = 2.0  # probe mIoU points a candidate may lose against the shipped model
#: Timesteps prompt sensitivity is measured at (t = 1: the features' timestep).
SENSITIVITY_TIMESTEPS = (1, 200, 400)
#: Timesteps of the caption-vs-empty loss gap (where the caption matters for features).
GAP_TIMESTEPS = (50, 200, 400, 600)


def _context(bb: DiffusionBackbone, text: str, trim: bool) -> torch.Tensor:
    return encode_scene(bb.text_encoder, bb.tokenizer, text, trim=trim)


def _change(fa: dict[str, torch.Tensor], fb: dict[str, torch.Tensor]) -> float:
    """Return 100 x ||fa - fb|| / ||fb||, per image and map s*, averaged."""
    keys = [k for k in sorted(fb) if k.startswith("s")]
    per_map = [
        ((fa[k] - fb[k]).flatten(1).norm(dim=1) / fb[k].flatten(1).norm(dim=1)).mean() for k in keys
    ]
    return 100 * float(torch.stack(per_map).mean())


@torch.no_grad()
def prompt_sensitivity(
    bb: DiffusionBackbone,
    images: torch.Tensor,
    prompts: Sequence[str],
    timesteps: Sequence[int] = SENSITIVITY_TIMESTEPS,
    seed: int = 0,
) -> pd.DataFrame:
    """Return, per timestep, how much the feature maps of ``images`` change with the prompt
    (% relative L2, mean over images and over the maps s*):

    - "scene vs scene %": ||f(p_i) - f(p_j)|| / ||f(p_j)|| over ordered pairs of ``prompts``;
    - "scene vs empty %": ||f(p_i) - f("")|| / ||f("")||.

    At t > 1 the latents are noised with the same seeded noise for every prompt.
    """
    if len(prompts) < 2:
        raise ValueError("prompt sensitivity needs at least two scene prompts")
    trim = masks_padding(bb)
    old = bb.cfg
    rows = []
    try:
        for t in timesteps:
            bb.cfg = FeatureConfig(
                blocks=bb.blocks,
                timesteps=(t,),
                noise=t > 1,
                seed=seed,
                scale_latents=old.scale_latents,
            )
            feats = {p: bb(images, _context(bb, p, trim)) for p in [*prompts, ""]}

            pairs = [_change(feats[a], feats[b]) for a, b in permutations(prompts, 2)]
            empty = [_change(feats[p], feats[""]) for p in prompts]
            rows.append(
                {
                    "timestep": int(t),
                    "scene vs scene %": sum(pairs) / len(pairs),
                    "scene vs empty %": sum(empty) / len(empty),
                }
            )
    finally:
        bb.cfg = old
    return pd.DataFrame(rows).set_index("timestep")


def text_use(
    bb: DiffusionBackbone,
    root: str | os.PathLike,
    images: int = 16,
    probe_steps: int = 300,
    prompts: int = 4,
    seed: int = 0,
    probe_images: tuple[int, int] = (120, 64),
    probe_miou: float | None = None,
) -> dict[str, float]:
    """Return the text-use measures of one model (see the module's docstring): prompt
    sensitivity at each of :data:`SENSITIVITY_TIMESTEPS` ("scene vs scene % t=T", "scene vs
    empty % t=T"), "binding mIoU", "caption gap % (t<=600)" and "probe mIoU".

    ``images``: held-out images per measure (GTA5 val for sensitivity, binding; Cityscapes
    val for the loss gap); ``prompts``: scene prompts sampled with ``seed``;
    ``probe_images``: (train, eval) images of the probe; ``probe_miou``: the probe's mIoU
    when it was already measured alike (it is then not trained again).
    """
    val = build_dataset(SOURCE, "val", root)
    x, _, _ = _stack(val, images)
    scene = sample_scene_prompts(prompts, torch.Generator().manual_seed(seed))
    sens = prompt_sensitivity(bb, x, scene, seed=seed)
    out: dict[str, float] = {}
    for t, row in sens.iterrows():
        out[f"scene vs scene % t={t}"] = float(row["scene vs scene %"])
        out[f"scene vs empty % t={t}"] = float(row["scene vs empty %"])
    out["binding mIoU"] = float(
        class_word_attention(bb, val, SOURCE, images, seed=seed)["mIoU"].max()
    )
    cx, _, caps = _stack(build_dataset("cityscapes", "val", root), images)
    gap = text_usage_by_timestep(bb, cx, caps, GAP_TIMESTEPS, seed=seed)
    out["caption gap % (t<=600)"] = float(gap["relative gap %"].mean())
    if probe_miou is None:
        train = build_dataset(SOURCE, "train", root)
        ctx = _context(bb, "", masks_padding(bb))[None]
        n_train, n_eval = probe_images
        kw = dict(source=SOURCE, n_train=n_train, n_eval=n_eval, steps=probe_steps, seed=seed)
        probe_miou = probe(bb, train, val, ctx, **kw)
    out["probe mIoU"] = float(probe_miou)
    return out


def meets_the_bar(candidate: dict[str, Any], shipped: dict[str, Any]) -> tuple[bool, str]:
    """Return (whether ``candidate`` may replace the shipped model, why) from two
    :func:`text_use` results measured alike."""
    binding = candidate["binding mIoU"]
    sens = candidate[f"scene vs scene % t={SENSITIVITY_TIMESTEPS[0]}"]
    loss = shipped["probe mIoU"] - candidate["probe mIoU"]
    text = binding >= MIN_BINDING or sens >= MIN_SENSITIVITY
    ok = text and loss <= MAX_PROBE_LOSS
    why = (
        f"binding {binding:.1f} mIoU (asked >= {MIN_BINDING:.0f}) or scene-prompt sensitivity "
        f"{sens:.1f}% at t={SENSITIVITY_TIMESTEPS[0]} (asked >= {MIN_SENSITIVITY:.0f}): "
        f"{'met' if text else 'not met'}; probe {candidate['probe mIoU']:.1f} against the shipped "
        f"{shipped['probe mIoU']:.1f} mIoU (may lose <= {MAX_PROBE_LOSS:.0f}): "
        f"{'met' if loss <= MAX_PROBE_LOSS else 'not met'}"
    )
    return ok, why


def text_use_table(measures: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Return the measures of several models (name -> :func:`text_use`) as a table, one row
    per model, in the given order."""
    return pd.DataFrame.from_dict(measures, orient="index").rename_axis("model")


def recorded_candidates(results: str | os.PathLike) -> pd.DataFrame:
    """Return the candidates measured by :mod:`~diffprompt.toysd.candidates` runs under
    ``results`` (their tables ``toy_sd_text_use_<name>`` and manifests), one row per
    candidate with "measured by" (run, device, git sha) and "meets the bar"; empty when there
    is none."""
    root = Path(results)
    rows = {}
    for csv in sorted((root / "tables").glob("toy_sd_text_use_*.csv")):
        name = csv.stem.removeprefix("toy_sd_text_use_")
        manifest = root / "manifests" / f"toy_sd_candidate_{name}.json"
        if not manifest.is_file():
            continue
        mf = json.loads(manifest.read_text())
        table = pd.read_csv(csv, index_col=0)
        if name not in table.index:
            continue
        row = table.loc[name].to_dict()
        row["meets the bar"] = mf.get("verdict")
        sha = mf["git"]["sha"][:10]
        row["measured by"] = f"{mf['name']} on {mf.get('accelerator', '?')} at git {sha}"
        rows[f"candidate {name}"] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
