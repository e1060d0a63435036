"""On-disk cache of a frozen backbone's features (and of VAE latents).

A frozen backbone under a fixed prompt maps an image to the same maps every time, so
training a head, probing and evaluating several heads need them only once. The cache is
keyed by

- the backbone: its description (source, feature config, channels, strides; the feature
  config's seed only where it noises the latents, :func:`backbone_identity`), dtype and a
  checksum of its weights;
- the conditioning: a checksum of the context tensor itself (so any change of the prompt
  text, the templates, the adapter or the text encoder gives another key);
- the image: data set class, split, root, file name, file size and modification time, and
  the transform applied to it.

Every entry is computed in a fixed chunk of its data set (:data:`CHUNK` images: image i
with images i // CHUNK * CHUNK, ... of the same data set, at the same position), never in
the batch a caller happened to ask for: batched kernels round differently with the batch
(an image's VAE latents and UNet maps computed in a batch of 8 differ in their last bits
from those computed alone or in a batch of 3, and fp16 storage keeps part of that), so what
a run read from the cache would otherwise depend on which run, with which batches, filled
it first. A fixed chunk computes the same inputs with the same shapes every time, at the
speed of a batch (a batch of one, the other batch-invariant scheme, was 1.6x slower on the
miniature). The key also names where the maps were computed (:func:`compute_identity`:
device, CPU threads, torch version) and the chunk size, which change the rounding too, so a
run reads exactly what it would compute itself.

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
from diffprompt.prompts import OWN_PROMPT, Prompt


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


#: Version of how entries are computed (part of every key): 3 = in fixed chunks of a data
#: set (:data:`CHUNK`), on the device and threads of :func:`compute_identity` (2: each image
#: alone; 1, unversioned: images in the batches they were asked for, whose entries depended
#: on their batch and are never read).
COMPUTE_VERSION = 3

#: Missing entries are computed in fixed chunks of a data set: image i always in one batch
#: with images [i // CHUNK * CHUNK, ... + CHUNK) of its data set, at the same position, so
#: its maps never depend on which images a caller asked for, nor on which run asked first
#: (batched kernels round differently for other batch sizes; for a fixed batch they compute
#: the same). Noised maps are computed one image at a time (each draws its own noise).
CHUNK = 8


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


def backbone_identity(backbone: nn.Module) -> dict:
    """Return what of a backbone's description decides its maps (part of every key): its
    :meth:`describe` (origin, feature config, channels, strides), without the feature
    config's ``seed`` when it adds no noise: the seed draws the noise only, so without noise
    the maps of every seed are the same and the runs of several seeds share them."""
    desc = backbone.describe() if hasattr(backbone, "describe") else {"repr": repr(backbone)}
    feats = desc.get("features")
    if isinstance(feats, dict) and not feats.get("noise", False):
        desc = {**desc, "features": {k: v for k, v in feats.items() if k != "seed"}}
    return desc


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

    Missing entries are computed in fixed chunks of their data set (:data:`CHUNK`), so that
    an image's maps do not depend on which other images were asked for with it.
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
        self.backbone_key = digest(
            {
                "backbone": backbone_identity(bb),
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
        self._context_keys: dict[str | None, str] = {}  # a prompt text -> its context's key
        # image keys per data set object (held weakly: a new data set never inherits them)
        self._image_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.hits = self.misses = 0

    # ------------------------------------------------------------------ keys
    def context_key(self, text: str | None) -> str:
        """Return the key of the context of one image's scene text (None: the model's own
        prompt): the checksum of that context (1, N, D), "none" for a backbone without one."""
        if text not in self._context_keys:
            with torch.no_grad():
                ctx = self.model.context(1, None if text is None else [text])
            self._context_keys[text] = "none" if ctx is None else tensor_checksum(ctx.float())
        return self._context_keys[text]

    def _context_keys_of(self, dataset, indices, prompt: Prompt, texts=()) -> list[str]:
        """The context keys of images ``indices`` under ``prompt`` (``texts``: its texts of
        them, when known)."""
        texts = prompt.texts(dataset, indices) if texts == () else texts
        if texts is None:
            return [self.context_key(None)] * len(indices)
        return [self.context_key(t) for t in texts]

    def _group(self, key: str, module: nn.Module) -> str:
        """Return the folder of entries computed by ``module`` under key ``key``: the key and
        :func:`compute_identity` of the module's device, as the process stands now."""
        dev = next(module.parameters(), torch.empty(0)).device
        return digest({"key": key, "compute": compute_identity(dev), "chunk": CHUNK})

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
    @staticmethod
    def chunks(dataset, indices: Sequence[int]) -> list[list[int]]:
        """Return the fixed chunks (:data:`CHUNK`) of ``dataset`` that hold ``indices``, in
        order of first appearance: each the whole run of indices it covers."""
        n = len(dataset)
        starts = dict.fromkeys(int(i) // CHUNK * CHUNK for i in indices)
        return [list(range(s, min(s + CHUNK, n))) for s in starts]

    def latents(self, dataset, indices: Sequence[int]) -> Tensor:
        """Return VAE latents (B, c, h, w) of images ``indices`` (computed once each, in the
        data set's fixed chunks)."""
        bb = self.model.backbone
        group = self._group(self.latent_key, bb.vae)
        out: dict[int, Tensor] = {}
        todo = []
        for i in dict.fromkeys(int(i) for i in indices):
            e = self._lookup(group, "latents", self.image_key(dataset, i))
            if e is None:
                todo.append(i)
            else:
                out[i] = e["z"]
        for chunk in self.chunks(dataset, todo):
            z = bb.encode(torch.stack([dataset[i]["image"] for i in chunk])).float().cpu()
            for i, zi in zip(chunk, z, strict=True):
                if i not in out:
                    out[i] = zi.clone()
                    self._store(group, "latents", self.image_key(dataset, i), {"z": out[i]})
        return torch.stack([out[int(i)] for i in indices])

    def _compute(self, dataset, idx: list[int], ctx: Tensor | None, noise: bool) -> dict:
        """Return the backbone's maps of images ``idx`` computed together (no autograd);
        ``ctx`` is (1, N, D) for all of them or (len(idx), N, D), one per image."""
        bb = self.model.backbone
        with torch.no_grad():
            if ctx is None:
                return bb(torch.stack([dataset[i]["image"] for i in idx]))
            z = None
            if self.latent_key:
                z = self.latents(dataset, idx).to(bb.unet.device)
            gen = None
            if noise:  # one image: its noise seeded by what names the image
                gen = torch.Generator().manual_seed(noise_seed(dataset, idx[0], bb.cfg.seed))
            x = None if z is not None else torch.stack([dataset[i]["image"] for i in idx])
            ctx = ctx if ctx.shape[0] == len(idx) else ctx.expand(len(idx), -1, -1)
            return bb(x, ctx, generator=gen, latents=z)

    def get(
        self,
        dataset,
        indices: Sequence[int],
        prompt: Prompt = OWN_PROMPT,
        device: torch.device | str = "cpu",
    ) -> dict[str, Tensor]:
        """Return the backbone's maps {name: (B, C, h, w)} of images ``indices`` of
        ``dataset`` under ``prompt`` (:class:`diffprompt.prompts.Prompt`; each image's entry
        is keyed by its own context), float32 on ``device``."""
        order = list(dict.fromkeys(int(i) for i in indices))
        bb = self.model.backbone
        group = self._group(self.backbone_key, bb)
        entries: dict[int, dict[str, Tensor]] = {}
        todo = []
        for i, key in zip(order, self._context_keys_of(dataset, order, prompt), strict=True):
            e = self._lookup(group, key, self.image_key(dataset, i))
            if e is None:
                todo.append(i)
            else:
                entries[i] = e
        self.hits += len(indices) - len(todo)
        self.misses += len(todo)
        noise = bool(getattr(getattr(bb, "cfg", None), "noise", False))
        groups = [[i] for i in todo] if noise else self.chunks(dataset, todo)
        for chunk in groups:  # each image of a chunk under its own text
            texts = prompt.texts(dataset, chunk)
            with torch.no_grad():
                ctx = self.model.context(len(chunk), texts)
            f = self._compute(dataset, chunk, ctx, noise)
            keys = self._context_keys_of(dataset, chunk, prompt, texts)
            for n, (i, key) in enumerate(zip(chunk, keys, strict=True)):
                if i not in entries:
                    e = {name: m[n].to(self.dtype).cpu().clone() for name, m in f.items()}
                    self._store(group, key, self.image_key(dataset, i), e)
                    entries[i] = e
        names = sorted(entries[int(indices[0])]) if len(indices) else []
        out = {}
        for name in names:
            stacked = torch.stack([entries[int(i)][name] for i in indices])
            out[name] = stacked.to(device, torch.float32)
        return out

    def batch(
        self, dataset, indices: Sequence[int], context: Tensor, latents: Tensor
    ) -> dict[str, Tensor]:
        """Return the backbone's maps {name: (B, C, h, w)} of images ``indices`` under
        ``context`` (B, N, D) from their ``latents``, computed together as one batch (not in
        the fixed chunks of :meth:`get`) and kept in memory for the session, keyed by the
        backbone, the context's checksum and the images in order: TTA's evaluation batches
        of a fixed prompt, which every seed's DG model shares."""
        images = tuple(self.image_key(dataset, int(i)) for i in indices)
        key = ("batch", self.backbone_key, tensor_checksum(context.float()), images)
        entry = MEMORY.get(key)
        if entry is None:
            x = torch.zeros(len(latents), 3, 1, 1)  # the latents stand for the images
            with torch.no_grad():
                maps = self.model.backbone(x, context, latents=latents)
            entry = {k: v.clone() for k, v in maps.items()}
            MEMORY.put(key, entry)
        return entry
