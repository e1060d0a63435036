"""The DG training loop: a SegModel's head trained on the source domain only.

Two feature paths share everything else (loss, head, optimizer, schedule, checkpoints):

- ``cache_features=True`` (the embedded default): features of the source images (at
  ``train_size``, no random crops) are computed once per prompt and cached on disk
  (:class:`diffprompt.cache.FeatureCache`); randomization draws K prompts per step from a
  pool of ``prompt_pool`` prompts sampled once from the vocabulary. Horizontal flips are
  applied to features and labels together.
- ``cache_features=False`` (the paper protocol): every step loads images with random
  scale, crop and flip, encodes them with the VAE once and runs the UNet under each of the
  K prompts, drawn fresh from the vocabulary (``prompt_pool=0``) or from the pool.

Training runs on accelerate (mixed precision, gradient accumulation, multi-GPU with
``accelerate launch``). What each step sees is a function of (seed, step)
(:mod:`diffprompt.dg.sampling`), so a resumed run continues exactly and N processes see the
same global batch as one (each takes its share).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from diffprompt.build import build_model
from diffprompt.cache import FeatureCache
from diffprompt.captions import CaptionPrompt
from diffprompt.dg import checkpoint as ckpt
from diffprompt.dg.config import (
    TrainConfig,
    check_config,
    config_dict,
    config_hash,
    effective_prompts,
)
from diffprompt.dg.data import RunData, check_sizes, open_run_data
from diffprompt.dg.losses import dg_loss
from diffprompt.dg.sampling import (
    BatchShare,
    augmented_batch,
    run_prompts,
    sample_flips,
    sample_indices,
    step_prompts,
)
from diffprompt.evaluate import ConfusionMatrix, Predictor, evaluate_predictions, miou_rows
from diffprompt.labels import IGNORE_INDEX
from diffprompt.prompts import OWN_PROMPT, Prompt, SceneText, vocabulary
from diffprompt.runtime import progress_mode, resolve_device


def poly_lambda(warmup: int, total: int, power: float = 1.0) -> Callable[[int], float]:
    """Return the learning-rate factor of step s: linear warm-up over ``warmup`` steps, then
    poly decay (1 - progress) ** power to 0 at ``total``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1.0 - progress) ** power

    return factor


@dataclass
class TrainState:
    """Where a run stands (saved with every checkpoint)."""

    step: int = 0
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class Trainer:
    """Trains a SegModel's head on the source domain as a :class:`TrainConfig` says.

    >>> t = Trainer(cfg, out_dir="results/runs/dg/<run>")
    >>> t.fit()            # resumes from out_dir/checkpoint.pt when present
    >>> t.evaluate()       # {target: ConfusionMatrix}

    ``out_dir=None`` keeps nothing on disk (no checkpoints; features cached in memory).
    ``data``: the run's :class:`diffprompt.dg.data.RunData` (None: opened and checked here).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: str | os.PathLike | None = None,
        log: Callable[[str], None] = print,
        backbone=None,
        cache_dir: str | os.PathLike | None = None,
        accelerator: Accelerator | None = None,
        data: RunData | None = None,
    ):
        check_config(cfg)
        self.cfg, self.log = cfg, log
        self.out_dir = Path(out_dir) if out_dir is not None else None
        on_cpu = resolve_device(cfg.device).type == "cpu"
        self.acc = accelerator or Accelerator(
            cpu=on_cpu,
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
        )
        if cfg.batch_size % (self.acc.num_processes * cfg.grad_accum):
            raise ValueError(
                f"batch_size {cfg.batch_size} must split evenly over "
                f"{self.acc.num_processes} process(es) x {cfg.grad_accum} accumulation step(s)"
            )
        self.share = BatchShare(
            cfg.batch_size, cfg.grad_accum, self.acc.num_processes, self.acc.process_index
        )
        self.device = self.acc.device
        self.data = data or open_run_data(cfg, cache_dir, self.device)
        self.model = build_model(cfg, self.device, backbone)
        self.multiple = getattr(self.model.backbone, "multiple", 1)
        check_sizes(cfg, self.data.source, self.multiple)
        self.k, self.lam = effective_prompts(cfg)
        self.pool, self.single = run_prompts(cfg, self.data.captions)
        self.vocab = vocabulary(cfg.vocabulary_size)
        self.cache = None
        if cfg.cache_features:
            self.cache = FeatureCache(self.model, cache_dir)
        groups = self.model.param_groups(cfg.lr, cfg.unet_lr_mult)
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = poly_lambda(cfg.warmup, cfg.steps, cfg.poly_power)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, schedule)
        self.ddp_model, self.opt = self.acc.prepare(self.model, self.opt)
        self.state = TrainState()
        self.hash = config_hash(cfg)
        self._loaded = False  # a checkpoint's state is loaded (fit continues from it)

    # ------------------------------------------------------------------ one micro-batch
    def micro_logits(self, step: int, micro_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits (K, b, C, h, w) at the head's resolution, target (b, H, W)) of this
        process's share of one micro-batch."""
        positions = self.share.positions(step, micro_batch)
        source = self.data.source
        idx = sample_indices(self.cfg.seed, positions, self.data.train_indices)
        prompts = step_prompts(self.cfg.seed, step, self.k, self.pool, self.vocab, self.single)
        flips = sample_flips(self.cfg.seed, positions, self.cfg.flip)
        b, k = len(idx), len(prompts)
        if self.cache is not None:  # maps of each prompt from the cache, flipped with labels
            y = source.masks(idx)
            per_prompt = [self.cache.get(source, idx, p, self.device) for p in prompts]
            feats = {name: torch.cat([m[name] for m in per_prompt]) for name in per_prompt[0]}
            flip = flips.repeat(k).to(self.device)[:, None, None, None]  # (K*b, 1, 1, 1)
            feats = {name: torch.where(flip, v.flip(-1), v) for name, v in feats.items()}
            logits = self.ddp_model(feats=feats, native=True)  # one head pass for the K prompts
        else:  # augmented images, VAE once, the UNet under the K prompts in one batch
            x, y = augmented_batch(source, idx, positions, self.cfg, self.multiple)
            x = torch.where(flips[:, None, None, None], x.flip(-1), x).to(self.device)
            z = self.acc.unwrap_model(self.ddp_model).backbone.encode(x)
            texts = [p.texts(source, idx) for p in prompts]  # K lists (None: the model's own)
            joined = None if None in texts else [t for each in texts for t in each]
            xk, zk = x.repeat(k, 1, 1, 1), z.repeat(k, 1, 1, 1)
            logits = self.ddp_model(xk, scene_texts=joined, latents=zk, native=True)
        y = torch.where(flips[:, None, None], y.flip(-1), y)
        return logits.unflatten(0, (k, b)), y.to(self.device)

    def _ce_denominator(self, y: torch.Tensor) -> torch.Tensor | None:
        """With several processes: the labeled pixels of the micro-batch over all processes,
        divided by their number (None with one process: a plain mean), so that processes
        whose shares hold different numbers of ignored pixels still average their gradients
        to the one-process gradient."""
        if self.acc.num_processes == 1:
            return None
        n = (y != IGNORE_INDEX).sum().to(torch.float64)
        total = self.acc.reduce(n, reduction="sum")
        return (total / self.acc.num_processes).clamp_min(1.0).to(torch.float32)

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / ckpt.CHECKPOINT

    def save_checkpoint(self) -> Path | None:
        """Write out_dir/checkpoint.pt atomically (main process only)."""
        if self.ckpt_path is not None and self.acc.is_main_process:
            model = self.acc.unwrap_model(self.ddp_model)
            payload = {
                "config": json.dumps(config_dict(self.cfg)),
                "config_hash": self.hash,
                "state": json.dumps(asdict(self.state)),
                "model": ckpt.trainable_state(model, self.cfg.finetune_unet),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
            }
            ckpt.save_checkpoint(self.ckpt_path, payload)
        self.acc.wait_for_everyone()
        return self.ckpt_path

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> bool:
        """Resume from a checkpoint (default: out_dir/checkpoint.pt); return whether one was
        read. A checkpoint of another configuration raises ConfigMismatchError."""
        path = Path(path) if path is not None else self.ckpt_path
        if path is None or not path.is_file():
            return False
        d = ckpt.read_checkpoint(path, self.cfg)
        ckpt.load_trainable(self.acc.unwrap_model(self.ddp_model), d["model"], path, self.cfg)
        self.opt.load_state_dict(d["optimizer"])
        self.sched.load_state_dict(d["scheduler"])
        torch.set_rng_state(d["torch_rng"])
        self.state = TrainState(**json.loads(d["state"]))
        self._loaded = True
        return True

    # ------------------------------------------------------------------ training
    def fit(self, resume: bool = True, stop_at: int | None = None) -> TrainState:
        """Train to ``cfg.steps`` (resuming from the checkpoint in out_dir when ``resume``);
        checkpoint every ``ckpt_every`` steps and at the end. ``stop_at`` ends early after
        that step, with a checkpoint (as an interrupted run would leave). Returns the state."""
        cfg, acc = self.cfg, self.acc
        if resume and (self._loaded or self.load_checkpoint()):
            done = "finished run" if self.state.step >= cfg.steps else "resumed"
            self.log(f"{done}: {self.ckpt_path} at step {self.state.step}")
        else:
            torch.manual_seed(cfg.seed + acc.process_index)
        if self.state.step >= cfg.steps:
            return self.state
        if acc.is_main_process:
            self.log(
                f"training {cfg.prompt_mode} from step {self.state.step} on "
                f"{acc.num_processes} process(es) ({self.device}), "
                f"{self.share.images_per_process} image(s) per process per micro-batch"
            )
        show_bar = progress_mode(cfg.progress) == "bar" and acc.is_main_process
        bar = None
        if show_bar:
            bar = tqdm(total=cfg.steps, initial=self.state.step, desc=f"DG {cfg.prompt_mode}")
        self.ddp_model.train()
        t0 = time.time() - self.state.seconds
        end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
        # accelerate keeps the accumulation count in a process-wide singleton, which another
        # Trainer of this process may have changed: set ours (and restart its micro count)
        acc.gradient_accumulation_steps = cfg.grad_accum
        acc.step = 0
        while self.state.step < end:
            sums = self._step(self.state.step)
            self.sched.step()
            self.state.step += 1
            s = self.state.step
            lr = self.sched.get_last_lr()[0]
            entry = {"step": s, **sums, "lr": lr, "seconds": round(time.time() - t0, 2)}
            if self.data.curve is not None and (s % cfg.eval_every == 0 or s == cfg.steps):
                entry["curve_mIoU"] = self.curve_miou()
            self.state.log.append(entry)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss']:.3f}")
            elif acc.is_main_process and (s % cfg.log_every == 0 or s in (1, cfg.steps)):
                curve = (
                    f" {self.data.curve.name} mIoU {entry['curve_mIoU']:.2f}"
                    if "curve_mIoU" in entry
                    else ""
                )
                self.log(
                    f"step {s}/{cfg.steps} loss {sums['loss']:.4f} ce {sums['ce']:.4f} "
                    f"consistency {sums['consistency']:.4f} lr {lr:.2e}{curve} "
                    f"{entry['seconds']:.0f}s"
                )
            self.state.seconds = time.time() - t0
            if cfg.ckpt_every and s % cfg.ckpt_every == 0 and s < cfg.steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        self.ddp_model.eval()
        self.save_checkpoint()
        return self.state

    def _step(self, step: int) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the losses (the
        global batch's mean with several processes, as one process would log them)."""
        sums = {"loss": 0.0, "ce": 0.0, "consistency": 0.0}
        for micro_batch in range(self.cfg.grad_accum):
            with self.acc.accumulate(self.ddp_model):
                logits, y = self.micro_logits(step, micro_batch)
                out = dg_loss(
                    logits,
                    y,
                    self.lam,
                    self.cfg.consistency,
                    ce_denominator=self._ce_denominator(y),
                    resolution=self.cfg.loss_resolution,
                )
                self.acc.backward(out["loss"])
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            for name in sums:
                sums[name] += out[name].item() / self.cfg.grad_accum
        if self.acc.num_processes > 1:
            values = torch.tensor(list(sums.values()), device=self.device)
            values = self.acc.reduce(values, reduction="mean")
            sums = dict(zip(sums, values.tolist(), strict=True))
        return sums

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def curve_miou(self) -> float:
        """Return the mIoU (%) of the model as it is on the curve set (:func:`curve_set`),
        leaving it in training mode (the global RNG untouched: dropout is off in eval)."""
        curve = self.data.curve
        ds, indices = curve.dataset, curve.indices
        self.ddp_model.eval()
        cm = evaluate_predictions(self.predictor(ds), ds, indices, self.cfg.eval_batch)
        self.ddp_model.train()
        counts = {curve.name: len(indices)}
        return miou_rows({curve.name: cm}, {curve.name: ds}, self.cfg.source, counts)[0]["mIoU"]

    def test_prompt(self) -> Prompt:
        """The prompt of the test images: the model's own scene prompt, or
        ``test_scene_text`` where it differs; in the caption modes each test image's caption
        (``test_caption``: as it is, or without its condition words)."""
        if self.data.captions is not None:
            return CaptionPrompt(self.data.captions, self.cfg.test_caption)
        text = self.cfg.test_scene_text
        return SceneText(text) if text and text != self.cfg.scene_text else OWN_PROMPT

    def predictor(self, dataset) -> Predictor:
        """Return predict(images, indices) -> class indices (B, H, W) for ``dataset``."""
        model = self.acc.unwrap_model(self.ddp_model)
        return Predictor(model, self.cfg, dataset, self.cache, self.test_prompt(), self.device)

    def eval_sets(self) -> dict[str, Any]:
        """Return {name: dataset} of what :meth:`evaluate` scores (source val first)."""
        return dict(self.data.eval_sets)

    @torch.no_grad()
    def evaluate(self, sets: Mapping[str, Any] | None = None) -> dict[str, ConfusionMatrix]:
        """Return {name: ConfusionMatrix} over the eval sets (dataset level, keeping each
        image's matrix for the bootstrap: ``per_image_matrices()``); logs each mIoU (over :func:`diffprompt.benchmarks.eval_classes`)."""
        sets = self.eval_sets() if sets is None else sets
        self.ddp_model.eval()
        out = {}
        for name, ds in sets.items():
            n = self.data.eval_count(ds)
            out[name] = evaluate_predictions(
                self.predictor(ds), ds, range(n), self.cfg.eval_batch, per_image=True
            )
            if self.acc.is_main_process:
                row = self.miou_rows({name: out[name]}, {name: ds})[0]
                self.log(f"{name}: mIoU {row['mIoU']:.2f} ({n} images)")
        return out

    def miou_rows(
        self, cms: Mapping[str, ConfusionMatrix], sets: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """Return {"target", "mIoU", "images", "classes"} per evaluated set
        (:func:`diffprompt.evaluate.miou_rows`)."""
        counts = {name: self.data.eval_count(ds) for name, ds in sets.items()}
        return miou_rows(cms, sets, self.cfg.source, counts)
