"""Text conditioning of a Stable-Diffusion UNet: category tokens and a scene prompt.

Following VPD and the paper, the UNet's cross-attention context is the concatenation
``[category tokens ; scene tokens]`` along the token axis:

- category tokens (C, D): one token per class (:func:`diffprompt.text.category_embeddings`),
  refined by a learnable :class:`TextAdapter` (VPD);
- scene tokens (L, D): the last hidden states of one scene description
  (:data:`DEFAULT_SCENE_TEXT`), either fixed, randomized per training step over domain
  descriptors (:data:`SCENE_VOCABULARY`, :func:`sample_scene_prompts`) or learned at test
  time (:class:`LearnableScenePrompt`).

:class:`Prompts` puts the pieces together from a :class:`PromptConfig`. The text encoder is
frozen and never becomes a submodule, so ``Prompts.parameters()`` and its state dict only
hold what is learned.

What a batch is prompted with is a :class:`Prompt`: the model's own scene prompt
(:data:`OWN_PROMPT`), one scene text for every image (:class:`SceneText`) or one per image
(:class:`diffprompt.captions.CaptionPrompt`); the trainer, the predictor, the feature cache
and TTA take any of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from diffprompt.text import (
    TEMPLATES,
    category_embeddings,
    encode_scene,
    eos_index,
    module_device,
    tokenize,
)

#: The scene prompt the head is trained and tested with by default (ours).
DEFAULT_SCENE_TEXT = "a photo of an urban street scene"


class Prompt(Protocol):
    """What the UNet is prompted with for images of a data set."""

    def texts(self, dataset, indices: Sequence[int]) -> list[str] | None:
        """One scene text per image of ``indices``, or None: the model's own scene prompt."""
        ...


@dataclass(frozen=True)
class OwnPrompt:
    """The scene prompt the model was built with (its :class:`PromptConfig`), for every image."""

    def texts(self, dataset, indices: Sequence[int]) -> None:
        return None


#: The model's own scene prompt.
OWN_PROMPT = OwnPrompt()


@dataclass(frozen=True)
class SceneText:
    """One scene text for every image."""

    text: str

    def texts(self, dataset, indices: Sequence[int]) -> list[str]:
        return [self.text] * len(indices)


#: Domain descriptors the scene prompt is randomized over (in the spirit of DIDEX's
#: condition list). Each composed prompt draws one entry per key.
SCENE_VOCABULARY: dict[str, tuple[str, ...]] = {
    "style": (
        "a photo",
        "a rendered image",
        "a video game screenshot",
        "a painting",
        "a dashcam photo",
        "a blurry photo",
        "a sharp photo",
        "a drawing",
    ),
    "place": (
        "an urban street scene",
        "a city street",
        "a suburban road",
        "a highway",
        "a busy intersection",
        "a residential street",
        "a downtown avenue",
        "a country road",
    ),
    "time": (
        "at night",
        "at dawn",
        "at dusk",
        "in daylight",
        "at noon",
        "in the evening",
        "in the morning",
    ),
    "weather": (
        "in the rain",
        "in fog",
        "in mist",
        "in snow",
        "on a sunny day",
        "under an overcast sky",
        "in clear weather",
        "in a storm",
    ),
    "camera": (
        "taken from a car",
        "seen from the sidewalk",
        "with a wide-angle lens",
        "from a dashboard camera",
        "at eye level",
        "from a low viewpoint",
    ),
}
SCENE_TEMPLATE = "{style} of {place} {time} {weather}, {camera}"
#: Scene-text encodings a :class:`Prompts` keeps (the oldest goes first beyond it): the
#: pool's prompts and test prompts fit; per-image captions pass through.
SCENE_CACHE_SIZE = 512
#: What a context holds (PromptConfig.tokens): the empty prompt's encoding, the category
#: tokens only, [category tokens ; scene tokens], or a text's tokens alone ("text": a
#: caption without category tokens).
TOKENS = ("null", "category", "scene", "text")


def sample_scene_prompts(
    k: int,
    generator: torch.Generator,
    vocabulary: Mapping[str, Sequence[str]] = SCENE_VOCABULARY,
    template: str = SCENE_TEMPLATE,
) -> list[str]:
    """Return ``k`` scene prompts, each drawing one entry per vocabulary key with ``generator``.

    E.g. "a dashcam photo of a city street at dusk in fog, taken from a car". Keys are drawn
    in the vocabulary's order, so a seed gives the same prompts.
    """
    prompts = []
    for _ in range(k):
        choice = {
            key: entries[int(torch.randint(len(entries), (1,), generator=generator))]
            for key, entries in vocabulary.items()
        }
        prompts.append(re.sub(r"\s+", " ", template.format(**choice)).strip())
    return prompts


def vocabulary(size: int = 0) -> dict[str, tuple[str, ...]]:
    """Return the scene vocabulary with the first ``size`` descriptors of each key (0 = all)."""
    if size < 0:
        raise ValueError(f"vocabulary size must be >= 0, got {size}")
    return {k: v[:size] if size else v for k, v in SCENE_VOCABULARY.items()}


def prompt_corpus(class_names: Sequence[str] = ()) -> list[str]:
    """Return every text this module may encode for ``class_names`` (templates filled in,
    the default scene text, the scene vocabulary), e.g. to build a tokenizer that holds all
    their words (``diffprompt.backbones.tokenizer.build_clip_tokenizer``)."""
    texts = [t.format(c) for c in class_names for t in TEMPLATES]
    texts += [DEFAULT_SCENE_TEXT, re.sub(r"\{\w+\}", "", SCENE_TEMPLATE)]
    return texts + [e for entries in SCENE_VOCABULARY.values() for e in entries]


# ---------------------------------------------------------------------------------------
# The conditioning modules


class TextAdapter(nn.Module):
    """VPD's text adapter: ``x + gamma * MLP(x)`` with a per-channel ``gamma`` (D,).

    MLP = Linear(dim, hidden) -> GELU -> Linear(hidden, dim), hidden = dim by default. With a
    small ``gamma_init`` the adapter starts close to the identity.
    """

    def __init__(self, dim: int, hidden: int | None = None, gamma_init: float = 1e-4) -> None:
        super().__init__()
        hidden = hidden or dim
        self.fc = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.gamma = nn.Parameter(torch.full((dim,), float(gamma_init)))

    def forward(self, x: Tensor) -> Tensor:
        """Return the adapted embeddings, same shape as ``x``: (C, D) or (B, C, D)."""
        return x + self.gamma * self.fc(x)


# ---------------------------------------------------------------------------------------
# Scene prompts


class LearnedWords(nn.Module):
    """Word embeddings learned in front of a frozen text encoder: the parameter ``words``
    (n_words, D) and its init ``init_words``; :attr:`init_ids` are the init words' token ids.
    The encoder and tokenizer are kept as plain references, not submodules."""

    words: nn.Parameter
    init_words: Tensor
    init_ids: Tensor

    def __init__(self, text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self._frozen = (text_encoder, tokenizer)  # a tuple hides the encoder from nn.Module

    def reset(self) -> None:
        """Restore the word embeddings of the init text."""
        with torch.no_grad():
            self.words.copy_(self.init_words)

    def drift(self) -> Tensor:
        """Per learned word, how far it moved from its init (relative L2), without autograd."""
        return ((self.words - self.init_words).norm(dim=-1) / self.init_words.norm(dim=-1)).detach()

    def _encode(
        self, ids: Tensor, emb: Tensor, text_encoder: CLIPTextModel | None = None
    ) -> Tensor:
        """Run the frozen encoder (None: the one this was built on) on input ids (B, L) whose
        token embeddings are ``emb`` (B, L, D); returns the last hidden states (B, L, D).
        Gradients reach ``emb`` only, never the encoder."""
        text_encoder = text_encoder if text_encoder is not None else self._frozen[0]
        device = module_device(text_encoder)
        emb = emb.to(device)

        def replace(_module: nn.Module, _args: tuple, output: Tensor) -> Tensor:
            return emb.to(output.dtype).expand_as(output)

        frozen = {n: p.detach() for n, p in text_encoder.named_parameters()}
        handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            kwargs = {"input_ids": ids.to(device)}
            out = torch.func.functional_call(text_encoder, frozen, kwargs=kwargs)
        finally:
            handle.remove()
        return out.last_hidden_state

    @torch.no_grad()
    def nearest_words(
        self, tokenizer: PreTrainedTokenizerBase, k: int = 1, whole_words: bool = False
    ) -> list[list[str]]:
        """Return, per learnable position, the ``k`` vocabulary tokens whose input embeddings
        are nearest (cosine) to the learned one, decoded as text, nearest first.
        ``whole_words`` searches only tokens that are whole alphabetic words (CLIP's
        ``word</w>`` tokens), leaving out byte pieces and special tokens."""
        table = self._frozen[0].get_input_embeddings().weight.float()  # (V, D)
        ids = torch.arange(table.shape[0])
        if whole_words:
            vocab = tokenizer.get_vocab()
            keep = []
            for t, i in vocab.items():
                if t.endswith("</w>") and i < table.shape[0]:
                    text = tokenizer.decode([i]).strip()
                    if len(text) > 1 and text.isalpha() and text.isprintable():
                        keep.append(i)
            ids = torch.tensor(sorted(keep))
        words = self.words.float().to(table.device)  # (n_words, D)
        cand = nn.functional.normalize(table[ids.to(table.device)], dim=-1)
        sim = nn.functional.normalize(words, dim=-1) @ cand.T
        top = sim.topk(min(k, len(ids)), dim=-1).indices  # (n_words, k)
        return [[tokenizer.decode([int(ids[i])]) for i in row] for row in top]


class LearnableScenePrompt(LearnedWords):
    """A scene prompt whose word embeddings are learned (e.g. by test-time adaptation).

    The input token embeddings of the init text's words (positions strictly between BOS and
    EOS) are a parameter ``words`` (n_words, D); those of BOS, EOS and padding stay fixed. The
    forward runs the frozen text encoder on these embeddings, keeping the init text's input
    ids, so EOS pooling and causal masking are unchanged.
    """

    def __init__(
        self,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
        init_text: str,
        trim: bool = False,
    ) -> None:
        super().__init__(text_encoder, tokenizer)
        self.init_text, self.trim = init_text, trim
        ids = tokenize(tokenizer, [init_text])[0]  # (L,)
        self.eos_index = eos_index(ids, tokenizer.eos_token_id)
        with torch.no_grad():
            emb = text_encoder.get_input_embeddings()(ids.to(module_device(text_encoder)))  # (L, D)
        self.register_buffer("input_ids", ids, persistent=False)
        self.register_buffer("fixed", emb.detach().clone(), persistent=False)
        init_words = emb[1 : self.eos_index].detach().clone()
        self.register_buffer("init_words", init_words, persistent=False)
        self.words = nn.Parameter(emb[1 : self.eos_index].detach().clone())  # (n_words, D)

    @property
    def init_ids(self) -> Tensor:
        """The token ids of the init text's words (BOS and EOS left out)."""
        return self.input_ids[1 : self.eos_index]

    def input_embeddings(self) -> Tensor:
        """Return the token embeddings fed to the encoder, (L, D): fixed BOS, learned words,
        fixed EOS and padding."""
        e = self.eos_index
        return torch.cat([self.fixed[:1], self.words, self.fixed[e:]])

    def forward(self, text_encoder: CLIPTextModel | None = None) -> Tensor:
        """Return the encoder's last hidden states (L, D) for the learned embeddings (trimmed
        to BOS..EOS when ``trim``). Gradients reach ``words`` only, never the encoder."""
        emb = self.input_embeddings()[None]
        states = self._encode(self.input_ids[None], emb, text_encoder)[0]  # (L, D)
        return states[: self.eos_index + 1] if self.trim else states


class LearnedSpan(LearnedWords):
    """A phrase whose word embeddings are learned and shared by every text that holds it:
    test-time adaptation that starts from each image's own caption learns the caption's
    condition words (e.g. "at night") as one span for the whole target, the rest of each
    caption fixed. :meth:`forward` encodes a batch of texts, each holding the phrase's
    tokens once or more (its first occurrence is learned): (B, L, D), equal to their plain
    encodings while the words are at their init."""

    def __init__(
        self, text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerBase, phrase: str
    ) -> None:
        super().__init__(text_encoder, tokenizer)
        ids = tokenizer(phrase, add_special_tokens=False)["input_ids"]
        if not phrase.strip() or not ids:
            raise ValueError(f"a learned span needs a phrase with words, got {phrase!r}")
        self.phrase = phrase
        self.register_buffer("span_ids", torch.tensor(ids), persistent=False)
        with torch.no_grad():
            emb = text_encoder.get_input_embeddings()(self.span_ids.to(module_device(text_encoder)))
        self.register_buffer("init_words", emb.detach().clone(), persistent=False)
        self.words = nn.Parameter(emb.detach().clone())  # (n_words, D)

    @property
    def init_ids(self) -> Tensor:
        """The token ids of the phrase."""
        return self.span_ids

    def positions(self, ids: Tensor) -> list[int]:
        """Per row of input ids (B, L), where the phrase's first occurrence starts; a
        ValueError when a row lacks it (e.g. truncated away)."""
        span, n = self.span_ids.tolist(), len(self.span_ids)
        starts = []
        for r, row in enumerate(ids.tolist()):
            found = [i for i in range(len(row) - n + 1) if row[i : i + n] == span]
            if not found:
                raise ValueError(
                    f"text {r} of the batch does not hold the learned phrase {self.phrase!r} "
                    f"(within the tokenizer's {ids.shape[1]} tokens)"
                )
            starts.append(found[0])
        return starts

    def forward(self, texts: Sequence[str]) -> Tensor:
        """Return the encoder's last hidden states (B, L, D) of ``texts`` with the phrase's
        token embeddings replaced by the learned ``words``."""
        text_encoder, tokenizer = self._frozen
        ids = tokenize(tokenizer, texts)  # (B, L)
        table = text_encoder.get_input_embeddings()
        with torch.no_grad():
            fixed = table(ids.to(module_device(text_encoder))).detach()  # (B, L, D)
        n, rows = len(self.span_ids), []
        for b, start in enumerate(self.positions(ids)):
            row = fixed[b]
            words = self.words.to(row.device, row.dtype)
            rows.append(torch.cat([row[:start], words, row[start + n :]]))
        return self._encode(ids, torch.stack(rows))


def assemble_conditioning(category: Tensor | None, scene: Tensor | None, batch_size: int) -> Tensor:
    """Return the cross-attention context (B, C + L, D): ``[category ; scene]`` along tokens.

    ``category`` is (C, D) or (B, C, D), ``scene`` (L, D) or (B, L, D); unbatched parts are
    broadcast over the batch. Either part may be None, not both. The dtype is the promotion
    of the parts' dtypes.
    """
    parts = [p for p in (category, scene) if p is not None]
    if not parts:
        raise ValueError("assemble_conditioning needs category tokens, scene tokens or both")
    dtype = parts[0].dtype if len(parts) == 1 else torch.promote_types(*(p.dtype for p in parts))
    batched = []
    for p in parts:
        if p.dim() == 2:
            p = p.expand(batch_size, -1, -1)
        if p.dim() != 3 or p.shape[0] != batch_size:
            raise ValueError(f"expected (T, D) or ({batch_size}, T, D), got {tuple(p.shape)}")
        batched.append(p.to(dtype))
    return torch.cat(batched, dim=1)


# ---------------------------------------------------------------------------------------
# The conditioning module


@dataclass
class PromptConfig:
    """How the UNet is conditioned."""

    tokens: str = "scene"  # "null" (empty) | "category" (class tokens) | "scene" (both) | "text"
    scene_text: str = DEFAULT_SCENE_TEXT  # the default scene prompt
    num_templates: int | None = None  # templates averaged per class (None: all TEMPLATES)
    pooling: str = "eos"  # class embedding per prompt: "eos" (VPD, CLIP) or "word" (its tokens)
    adapter: bool = True  # refine category tokens with VPD's TextAdapter
    gamma_init: float = 1e-4  # the adapter's initial residual scale
    trim_scene: bool = False  # keep only BOS..EOS of the scene prompt (drop padding states)
    learnable_scene: bool = False  # learn the scene prompt's word embeddings (TTA)


class Prompts(nn.Module):
    """The UNet's cross-attention context for a batch, as configured by a :class:`PromptConfig`.

    Holds the category embeddings (C, D) as a buffer, the :class:`TextAdapter` and the scene
    prompt (a fixed encoding, or a :class:`LearnableScenePrompt`). The text encoder and
    tokenizer are kept as plain references: they are neither parameters nor state.
    """

    def __init__(
        self,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
        class_names: Sequence[str],
        cfg: PromptConfig | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else PromptConfig()
        if cfg.tokens not in TOKENS:
            raise ValueError(f"unknown context tokens {cfg.tokens!r}; expected one of {TOKENS}")
        self.cfg, self.class_names = cfg, tuple(class_names)
        self._frozen = (text_encoder, tokenizer)  # a tuple hides the encoder from nn.Module
        self._scene_cache: dict[str, Tensor] = {}
        self.adapter: TextAdapter | None = None
        self.scene_prompt: LearnableScenePrompt | None = None
        self.category: Tensor | None
        self.scene: Tensor | None
        category = scene = None
        if cfg.tokens == "null":
            scene = encode_scene(text_encoder, tokenizer, "").float()  # (L, D)
        elif cfg.tokens == "text":
            scene = encode_scene(text_encoder, tokenizer, cfg.scene_text, cfg.trim_scene).float()
        else:
            category = category_embeddings(
                text_encoder,
                tokenizer,
                self.class_names,
                TEMPLATES,
                cfg.num_templates,
                cache_dir,
                cfg.pooling,
            )  # (C, D)
            if cfg.adapter:
                self.adapter = TextAdapter(category.shape[-1], gamma_init=cfg.gamma_init)
        if cfg.tokens == "scene":
            if cfg.learnable_scene:
                self.scene_prompt = LearnableScenePrompt(
                    text_encoder, tokenizer, cfg.scene_text, cfg.trim_scene
                )
            else:
                scene = encode_scene(text_encoder, tokenizer, cfg.scene_text, cfg.trim_scene)
                scene = scene.float()
        self.register_buffer("category", category, persistent=False)
        self.register_buffer("scene", scene, persistent=False)
        if self.adapter is not None:
            self.adapter.to(module_device(text_encoder))

    @property
    def num_category_tokens(self) -> int:
        """C, the number of category tokens in the context (0 with tokens "null")."""
        return 0 if self.category is None else self.category.shape[0]

    @property
    def num_tokens(self) -> int:
        """N, the number of tokens of the context :meth:`forward` returns."""
        if self.scene_prompt is not None:
            p = self.scene_prompt
            scene = p.eos_index + 1 if p.trim else p.input_ids.shape[0]
        else:
            scene = 0 if self.scene is None else self.scene.shape[0]
        return self.num_category_tokens + scene

    @property
    def category_slice(self) -> slice | None:
        """The token positions of the category tokens in the context, None with tokens "null"."""
        return None if self.category is None else slice(0, self.num_category_tokens)

    def category_tokens(self) -> Tensor:
        """Return the (adapted) category tokens (C, D)."""
        assert self.category is not None, "tokens 'null' has no category tokens"
        return self.adapter(self.category) if self.adapter is not None else self.category

    def _encoded_scene(self, text: str) -> Tensor:
        """Return the fixed encoding (L, D) of a scene text, cached per text, without autograd."""
        if text not in self._scene_cache:
            encoder, tokenizer = self._frozen
            if len(self._scene_cache) >= SCENE_CACHE_SIZE:  # captions are many: oldest out
                self._scene_cache.pop(next(iter(self._scene_cache)))
            self._scene_cache[text] = encode_scene(encoder, tokenizer, text).float()
        return self._scene_cache[text]

    def scene_tokens(self, batch_size: int, scene_texts: Sequence[str] | None = None) -> Tensor:
        """Return the scene tokens: (L, D) for the default prompt, (B, L, D) for ``scene_texts``
        (one per batch element)."""
        if scene_texts is None:
            return self.scene_prompt() if self.scene_prompt is not None else self.scene
        if len(scene_texts) != batch_size:
            raise ValueError(f"got {len(scene_texts)} scene texts for a batch of {batch_size}")
        if self.cfg.trim_scene:
            raise ValueError("scene_texts cannot be trimmed: their token counts differ")
        return torch.stack([self._encoded_scene(t) for t in scene_texts])

    def forward(self, batch_size: int, scene_texts: Sequence[str] | None = None) -> Tensor:
        """Return the cross-attention context (B, N, D), N = :attr:`num_tokens`.

        Tokens "null": the empty prompt's encoding; "category": the adapted category tokens;
        "scene": ``[adapted category tokens ; scene tokens]``, the scene tokens encoding
        ``scene_texts`` (one per batch element, e.g. randomized prompts or captions) when
        given, else the default scene prompt; "text": the scene tokens alone.
        """
        if self.cfg.tokens == "null":
            return assemble_conditioning(None, self.scene, batch_size)
        if self.cfg.tokens == "text":
            return assemble_conditioning(
                None, self.scene_tokens(batch_size, scene_texts), batch_size
            )
        category = self.category_tokens()
        if self.cfg.tokens == "category":
            return assemble_conditioning(category, None, batch_size)
        scene = self.scene_tokens(batch_size, scene_texts).to(category.device)
        return assemble_conditioning(category, scene, batch_size)
