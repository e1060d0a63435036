"""What the frozen text encoder gives: tokens, hidden states, and category embeddings.

- :func:`tokenize`, :func:`encode_texts`, :func:`encode_scene`, :func:`null_conditioning`:
  texts to input ids and to the encoder's last hidden states (as Stable Diffusion encodes
  prompts: padded to the model length, no attention mask);
- :func:`category_embeddings`: one embedding per class, the encoder's output for the class
  name in several :data:`TEMPLATES`, averaged over the templates (VPD), cached in memory
  and on disk under a fingerprint of everything it depends on;
- :func:`word_positions`: where a word's tokens stand in an encoded text.

:mod:`diffprompt.prompts` builds the UNet's cross-attention context from these.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from diffprompt.io import module_checksum, save_tensors

#: Templates for category prompts, "{}" standing for the class name. VPD averages the text
#: embeddings of CLIP's 80 ImageNet templates; these 20 are our own wording, biased to street
#: scenes and the conditions of the target domains.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a street scene with a {}.",
    "a city street with the {}.",
    "a blurry photo of the {}.",
    "a dark photo of the {}.",
    "a bright photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a low resolution photo of a {}.",
    "a rendering of a {}.",
    "a video game screenshot of a {}.",
    "a painting of the {}.",
    "a dashcam photo of a {}.",
    "a photo of a {} at night.",
    "a photo of a {} in the rain.",
    "a photo of a {} in fog.",
    "a photo of a {} in snow.",
    "a good photo of the {}.",
    "there is a {} in the scene.",
)


# ---------------------------------------------------------------------------------------
# Encoding texts


@dataclass
class TextEncoding:
    """What the text encoder gives for N texts."""

    last_hidden_state: Tensor  # (N, L, D) after the final layer norm
    pooled: Tensor  # (N, D) the state at the EOS token (CLIPTextModel's pooler_output)


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> Tensor:
    """Return the input ids (N, L) of ``texts``, padded and truncated to the model length."""
    return tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_texts(
    text_encoder: CLIPTextModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    grad: bool = False,
) -> TextEncoding:
    """Return the encoder's last hidden states (N, L, D) and pooled outputs (N, D) of ``texts``.

    Texts are padded to ``tokenizer.model_max_length`` and truncated; no attention mask is
    passed (as Stable Diffusion 1.x encodes prompts). The result is on the encoder's device and
    in its dtype, computed without autograd unless ``grad``.
    """
    ids = tokenize(tokenizer, texts).to(module_device(text_encoder))
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        out = text_encoder(input_ids=ids)
    return TextEncoding(out.last_hidden_state, out.pooler_output)


def eos_index(ids: Tensor, eos_token_id: int) -> int:
    """Return the position of the first EOS token in ``ids`` (L,) (the pad token may be EOS)."""
    return int((ids == eos_token_id).nonzero()[0])


def encode_scene(
    text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerBase, text: str, trim: bool = False
) -> Tensor:
    """Return the last hidden states (L, D) of one prompt, without autograd.

    L is the tokenizer's model length, or with ``trim`` the number of tokens from BOS to EOS
    inclusive (the padding states dropped).
    """
    states = encode_texts(text_encoder, tokenizer, [text]).last_hidden_state[0]  # (L, D)
    if trim:
        eos = eos_index(tokenize(tokenizer, [text])[0], tokenizer.eos_token_id)
        states = states[: eos + 1]
    return states


def null_conditioning(
    text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerBase, batch_size: int
) -> Tensor:
    """Return the encoded empty prompt "" repeated over the batch, (B, L, D): Stable
    Diffusion's unconditional context."""
    return encode_scene(text_encoder, tokenizer, "").expand(batch_size, -1, -1).clone()


# ---------------------------------------------------------------------------------------
# Category embeddings


_CATEGORY_CACHE: dict[str, Tensor] = {}


def clear_category_cache() -> None:
    """Forget the category embeddings cached in memory (files in a cache_dir stay)."""
    _CATEGORY_CACHE.clear()


def category_fingerprint(
    text_encoder: CLIPTextModel,
    tokenizer: PreTrainedTokenizerBase,
    class_names: Sequence[str],
    templates: Sequence[str],
    pooling: str = "eos",
) -> str:
    """Return a hex hash of what category embeddings depend on: the encoder's config and
    weights, the tokenizer's vocabulary and model length, the class names, templates and
    pooling."""
    config = {
        k: v
        for k, v in text_encoder.config.to_dict().items()
        if not k.startswith("_") and k != "transformers_version"
    }
    vocab = sorted(tokenizer.get_vocab().items())
    key = {
        "config": config,
        "weights": module_checksum(text_encoder),
        "vocab_size": len(tokenizer),
        "vocab": hashlib.blake2b(json.dumps(vocab).encode(), digest_size=16).hexdigest(),
        "model_max_length": tokenizer.model_max_length,
        "class_names": list(class_names),
        "templates": list(templates),
        **({"pooling": pooling} if pooling != "eos" else {}),
    }
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def category_embeddings(
    text_encoder: CLIPTextModel,
    tokenizer: PreTrainedTokenizerBase,
    class_names: Sequence[str],
    templates: Sequence[str] = TEMPLATES,
    num_templates: int | None = None,
    cache_dir: str | Path | None = None,
    pooling: str = "eos",
) -> Tensor:
    """Return one embedding per class (C, D), fp32, on the encoder's device.

    Each class name fills the first K templates (K = ``num_templates``, or all); an
    embedding per prompt is averaged over the K prompts. ``pooling`` picks that embedding:
    ``"eos"``, the pooled (EOS) output, as VPD does with CLIP, whose EOS token was trained
    contrastively to summarise the text; ``"word"``, the mean of the hidden states of the
    class name's own tokens, for text encoders without such training (the embedded model,
    whose encoder only learned from the denoising loss). Results are cached in memory, and in
    ``cache_dir/category-<fingerprint>.safetensors`` when ``cache_dir`` is given, under
    :func:`category_fingerprint`; a cache hit does not run the encoder.
    """
    templates = tuple(templates[:num_templates] if num_templates is not None else templates)
    if not templates:
        raise ValueError("category embeddings need at least one template")
    if pooling not in ("eos", "word"):
        raise ValueError(f"pooling must be 'eos' or 'word', got {pooling!r}")
    key = category_fingerprint(text_encoder, tokenizer, class_names, templates, pooling)
    path = Path(cache_dir) / f"category-{key}.safetensors" if cache_dir is not None else None
    if key not in _CATEGORY_CACHE and path is not None and path.is_file():
        _CATEGORY_CACHE[key] = load_file(path)["embeddings"]
    if key not in _CATEGORY_CACHE:
        texts = [t.format(name) for name in class_names for t in templates]
        enc = encode_texts(text_encoder, tokenizer, texts)
        if pooling == "eos":
            pooled = enc.pooled.float()  # (C * K, D)
        else:
            words = [name for name in class_names for _ in templates]  # the word of each text
            pooled = _word_states(tokenizer, texts, words, enc.last_hidden_state.float())
        emb = pooled.view(len(class_names), len(templates), -1).mean(dim=1).cpu()  # (C, D)
        _CATEGORY_CACHE[key] = emb
        if path is not None:
            meta = {
                "class_names": json.dumps(list(class_names)),
                "templates": json.dumps(templates),
            }
            save_tensors({"embeddings": emb}, path, meta)
    return _CATEGORY_CACHE[key].clone().to(module_device(text_encoder))


def word_positions(tokenizer, text: str, words: Sequence[str]) -> list[list[int]]:
    """Return, per word, the positions of its tokens (first occurrence) in ``text`` as
    :func:`tokenize` encodes it. A word whose tokens are not found is a ValueError."""
    row = tokenize(tokenizer, [text])[0].tolist()
    out = []
    for w in words:
        sub = tokenizer(w, add_special_tokens=False).input_ids
        starts = range(len(row) - len(sub) + 1)
        start = next((s for s in starts if row[s : s + len(sub)] == sub), None)
        if start is None:
            raise ValueError(f"the tokens of {w!r} are not found in {text!r} (truncated?)")
        out.append(list(range(start, start + len(sub))))
    return out


def _word_states(tokenizer, texts: Sequence[str], words: Sequence[str], states: Tensor) -> Tensor:
    """Return (N, D): per text, the mean hidden state of the tokens of its ``words``."""
    means = []
    for i, (text, word) in enumerate(zip(texts, words, strict=True)):
        positions = word_positions(tokenizer, text, [word])[0]
        means.append(states[i, positions].mean(0))
    return torch.stack(means)
