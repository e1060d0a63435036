"""On-disk cache of a frozen backbone's features (and of VAE latents).

A frozen backbone under a fixed prompt maps an image to the same maps every time, so
training a head, probing and evaluating several heads need them only once. The cache is
keyed by

- the backbone: its description (source, feature config, channels, strides), dtype and a
  checksum of its weights;
- the conditioning: a checksum of the context tensor itself (so any change of the prompt
  text, the templates, the adapter or the text encoder gives another key);
- the image: data set class, split, root, file name, file size and modification time, and
  the transform applied to it.

Every entry is computed from its image alone (a batch of one), never in a batch with other
images: batched kernels round differently with the batch size (an image's VAE latents and
UNet maps computed in a batch of 8 differ in their last bits from those computed alone or in
a batch of 3, and fp16 storage keeps part of that), so what a run read from the cache would
otherwise depend on which run, with which batches, filled it first. The key also names where the maps were computed
(:func:`compute_identity`: device, CPU threads, torch version), which change the rounding too,
so a run reads exactly what it would compute itself.

Any change of one of them gives a new key, so a stale entry is never read. Entries are
safetensors files written atomically under ``folder/<backbone>/<context>/<image>.safetensors``
(``folder/<vae>/latents/...`` for latents) and kept in memory for the session.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from diffprompt.io import digest, module_checksum, save_tensors, tensor_checksum


def image_identity(dataset, index: int) -> dict:
    """Return what identifies image ``index`` of a data set: class, split, root, file (name,
    size, mtime) and transform. Data sets without files fall back to their repr and index."""
    files = getattr(dataset, "files", None)
    ident = {
        "dataset": type(dataset).__name__,
        "split": getattr(dataset, "split", None),
        "root": str(getattr(dataset, "root", "")),
        "transform": repr(getattr(dataset, "transform", None)),
        "index": index,
    }
    if files is not None:
        path = Path(files[index][0])
        st = path.stat()
        ident.update(file=str(path), size=st.st_size, mtime=st.st_mtime_ns)
    else:
        ident["repr"] = repr(dataset)
    return ident


#: Version of :func:`noise_seed`'s scheme (part of every cache key: entries noised under an
#: older scheme are never read).
NOISE_SEED_VERSION = 2


#: Version of how entries are computed (part of every key): 2 = each image alone, on the
#: device and threads of :func:`compute_identity` (1, unversioned: images in batches, whose
#: entries depended on their batch and are never read).
COMPUTE_VERSION = 2


def compute_identity(device: torch.device | str) -> dict:
    """Return what, besides the inputs, decides a map's rounding: the device (its name on
    CUDA), the CPU's thread count (GEMMs split their sums over threads) and torch's version."""
    dev = torch.device(device)
    ident = {"scheme": COMPUTE_VERSION, "device": dev.type, "torch": torch.__version__}
    if dev.type == "cuda":
        ident["name"] = torch.cuda.get_device_name(dev)
    elif dev.type == "cpu":
        ident["threads"] = torch.get_num_threads()
    return ident


def noise_seed(dataset, index: int, seed: int = 0) -> int:
    """Return the seed of image ``index``'s noise: from what names the image independently of
    where the data lives (data set class, split, file path below the root, index), so that
    noised features are the same in every clone and data location."""
    files = getattr(dataset, "files", None)
    ident = {"dataset": type(dataset).__name__, "split": getattr(dataset, "split", None)}
    ident["index"] = index
    if files is not None:
        path = Path(files[index][0])
        try:
            ident["file"] = path.relative_to(Path(dataset.root)).as_posix()
        except (AttributeError, TypeError, ValueError):
            ident["file"] = path.name
    return int(digest(ident)[:12], 16) ^ int(seed)


class _Memory:
    """A least-recently-used store of cache entries with a byte budget, shared by every
    FeatureCache of the process (so runs in one session reuse each other's maps)."""

    def __init__(self, budget_bytes: int):
        self.budget, self.used = budget_bytes, 0
        self.items: OrderedDict[tuple, dict[str, Tensor]] = OrderedDict()

    @staticmethod
    def size(entry: dict[str, Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in entry.values())

    def get(self, key: tuple) -> dict[str, Tensor] | None:
        e = self.items.get(key)
        if e is not None:
            self.items.move_to_end(key)
        return e

    def put(self, key: tuple, entry: dict[str, Tensor]) -> None:
        if key in self.items:
            self.used -= self.size(self.items.pop(key))
        self.items[key] = entry
        self.used += self.size(entry)
        while self.used > self.budget and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.used -= self.size(old)

    def clear(self) -> None:
        self.items.clear()
        self.used = 0


#: In-memory budget of cached maps: $DIFFPROMPT_CACHE_GB gigabytes (default 4).
MEMORY = _Memory(int(float(os.environ.get("DIFFPROMPT_CACHE_GB", "4")) * 2**30))


class FeatureCache:
    """Features of ``model``'s frozen backbone under fixed contexts, in memory and on disk.

    ``model`` is a :class:`diffprompt.model.SegModel` whose backbone gets no gradient and
    whose prompts are fixed (nothing before the backbone is trained), else the cache
    refuses it: cached maps would go stale as the model learns. ``folder=None`` keeps the
    cache in memory only. Maps are stored in ``dtype`` (fp16 halves memory and disk).

    Missing entries are computed one image at a time, so that an image's maps do not depend
    on which other images were asked for with it (see the module's docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        folder: str | os.PathLike | None = None,
        dtype: torch.dtype = torch.float16,
    ) -> None:
        if getattr(model, "needs_backbone_grad", False):
            raise ValueError(
                "features cannot be cached while the backbone or a prompt part before it "
                "(TextAdapter, learnable scene prompt) is trained; turn caching off or freeze them"
            )
        self.model, self.dtype = model, dtype
        self.folder = Path(folder) if folder is not None else None
        bb = model.backbone
        desc = bb.describe() if hasattr(bb, "describe") else {"repr": repr(bb)}
        self.backbone_key = digest(
            {
                "backbone": desc,
                "weights": module_checksum(bb),
                "dtype": str(dtype),
                "noise_seed": NOISE_SEED_VERSION,
            }
        )
        vae = getattr(bb, "vae", None)
        self.latent_key = None
        if vae is not None:
            self.latent_key = digest(
                {
                    "vae": module_checksum(vae),
                    "scale": bb.cfg.scale_latents,
                    "dtype": str(vae.dtype),
                }
            )
        self._ctx: dict[str, tuple[str, Tensor | None]] = {}
        # image keys per data set object (held weakly: a new data set never inherits them)
        self._image_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.hits = self.misses = 0

    # ------------------------------------------------------------------ keys
    def context(self, scene_text: str | None) -> tuple[str, Tensor | None]:
        """Return (key, context (1, N, D) or None) of a scene prompt text (None: the
        prompts' default)."""
        name = "\0default" if scene_text is None else scene_text
        if name not in self._ctx:
            with torch.no_grad():
                ctx = self.model.context(1, None if scene_text is None else [scene_text])
            key = "none" if ctx is None else tensor_checksum(ctx.float())
            self._ctx[name] = (key, ctx)
        return self._ctx[name]

    def _group(self, key: str, module: nn.Module) -> str:
        """Return the folder of entries computed by ``module`` under key ``key``: the key and
        :func:`compute_identity` of the module's device, as the process stands now."""
        dev = next(module.parameters(), torch.empty(0)).device
        return digest({"key": key, "compute": compute_identity(dev)})

    def image_key(self, dataset, index: int) -> str:
        """Return the cache key of image ``index`` of ``dataset`` (:func:`image_identity`),
        computed once per data set object."""
        keys = self._image_keys.setdefault(dataset, {})
        if index not in keys:
            keys[index] = digest(image_identity(dataset, index))
        return keys[index]

    def _path(self, *parts: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder.joinpath(*parts[:-1], parts[-1] + ".safetensors")

    def _lookup(self, group: str, sub: str, key: str) -> dict[str, Tensor] | None:
        entry = MEMORY.get((group, sub, key))
        path = self._path(group, sub, key)
        if entry is None:
            if path is not None and path.is_file():
                entry = load_file(path)
                MEMORY.put((group, sub, key), entry)
        elif path is not None and not path.is_file():
            save_tensors(entry, path)  # from another cache of the session: persist here too
        return entry

    def _store(self, group: str, sub: str, key: str, entry: dict[str, Tensor]) -> None:
        MEMORY.put((group, sub, key), entry)
        path = self._path(group, sub, key)
        if path is not None:
            save_tensors(entry, path)

    # ------------------------------------------------------------------ access
    def latents(self, dataset, indices: Sequence[int]) -> Tensor:
        """Return VAE latents (B, c, h, w) of images ``indices`` (computed once each, each
        image alone)."""
        bb = self.model.backbone
        group = self._group(self.latent_key, bb.vae)
        keys = [self.image_key(dataset, i) for i in indices]
        out: dict[int, Tensor] = {}
        for j, k in enumerate(keys):
            e = self._lookup(group, "latents", k)
            if e is None:
                z = bb.encode(dataset[indices[j]]["image"][None]).float().cpu()
                e = {"z": z[0].clone()}
                self._store(group, "latents", k, e)
            out[j] = e["z"]
        return torch.stack([out[j] for j in range(len(keys))])

    def get(
        self,
        dataset,
        indices: Sequence[int],
        scene_text: str | None = None,
        device: torch.device | str = "cpu",
    ) -> dict[str, Tensor]:
        """Return the backbone's maps {name: (B, C, h, w)} of images ``indices`` of
        ``dataset`` under ``scene_text`` (None: the default prompt), float32 on ``device``."""
        ctx_key, ctx = self.context(scene_text)
        bb = self.model.backbone
        group = self._group(self.backbone_key, bb)
        keys = [self.image_key(dataset, i) for i in indices]
        entries: dict[int, dict[str, Tensor]] = {}
        todo = []
        for j, k in enumerate(keys):
            e = self._lookup(group, ctx_key, k)
            if e is None:
                todo.append(j)
            else:
                entries[j] = e
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        noise = bool(getattr(getattr(bb, "cfg", None), "noise", False))
        for j in todo:  # one image at a time: its maps never depend on other images
            i = indices[j]
            with torch.no_grad():
                if ctx is None:
                    f = bb(dataset[i]["image"][None])
                else:
                    z = None
                    if self.latent_key:
                        z = self.latents(dataset, [i]).to(bb.unet.device)
                    gen = None
                    if noise:  # noise per image, seeded by what names the image
                        gen = torch.Generator().manual_seed(noise_seed(dataset, i, bb.cfg.seed))
                    x = None if z is not None else dataset[i]["image"][None]
                    f = bb(x, ctx, generator=gen, latents=z)
            e = {name: m[0].to(self.dtype).cpu().clone() for name, m in f.items()}
            self._store(group, ctx_key, keys[j], e)
            entries[j] = e
        names = sorted(entries[0]) if entries else []
        out = {}
        for name in names:
            stacked = torch.stack([entries[j][name] for j in range(len(keys))])
            out[name] = stacked.to(device, torch.float32)
        return out
