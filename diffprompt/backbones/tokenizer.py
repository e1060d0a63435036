"""A small CLIP byte-level BPE tokenizer built from the project's own caption words.

The embedded Stable-Diffusion-style model needs a CLIP tokenizer, but CLIP's 49408-token
vocabulary would dwarf its tiny text encoder. :func:`build_clip_tokenizer` writes a
vocabulary in exactly CLIP's format instead (``vocab.json`` + ``merges.txt``, loaded by
:class:`transformers.CLIPTokenizer`), holding:

- the 256 byte-level symbols (CLIP's ``bytes_to_unicode`` mapping), each alone and each
  with the end-of-word marker ``</w>``, so that any text still tokenizes (down to bytes);
- every given word as one whole-word token ``word</w>``, with the intermediate merge
  results needed to build it;
- the special tokens ``<|startoftext|>`` and ``<|endoftext|>`` (also the pad token, as in
  Stable Diffusion 1.x), last, as in CLIP.

Words are split as CLIP's pre-tokenizer splits text (:func:`caption_words`): letter runs,
single digits and punctuation runs, so "street-level" gives "street", "-" and "level", and
"traffic light" gives two words. Each such piece becomes exactly one token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from itertools import pairwise
from pathlib import Path

from tokenizers import Regex, normalizers, pre_tokenizers
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
#: CLIP's pre-tokenizer pattern: special tokens, contractions, letter runs, single digits,
#: punctuation runs (what ``CLIPTokenizer`` splits normalized text into before BPE).
CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
#: Files a tokenizer folder may hold; stale ones are removed before a new build.
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


@cache
def bytes_to_unicode() -> dict[int, str]:
    """Return CLIP's (GPT-2's) map from each byte value (0..255) to a printable character.

    Printable latin-1 bytes map to themselves; the others (controls, space, ...) map to
    characters from U+0100 on, in byte order. The dict is ordered as CLIP's vocabulary.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    rest = [b for b in range(256) if b not in keep]
    chars = [*keep, *(256 + i for i in range(len(rest)))]
    return {b: chr(c) for b, c in zip([*keep, *rest], chars, strict=True)}


@cache
def _pre_tokenizer() -> tuple[normalizers.Normalizer, pre_tokenizers.PreTokenizer]:
    """Return CLIPTokenizer's normalizer and pre-tokenizer (the same ``tokenizers`` parts)."""
    norm = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    return norm, pre


def _byte_words(text: str) -> list[str]:
    """Return the byte-level pieces (CLIP's BPE inputs) of ``text``, special tokens dropped.

    Like ``CLIPTokenizer``, special tokens are cut out of the raw text before normalizing.
    """
    norm, pre = _pre_tokenizer()
    text = text.replace(BOS, " ").replace(EOS, " ")
    return [p for p, _ in pre.pre_tokenize_str(norm.normalize_str(text))]


def _from_byte_level(piece: str) -> str:
    inverse = {c: b for b, c in bytes_to_unicode().items()}
    return bytes(inverse[c] for c in piece).decode("utf-8")


def caption_words(captions: Iterable[str]) -> list[str]:
    """Return the sorted unique words CLIP's pre-tokenizer sees in ``captions``.

    Text is normalized as by ``CLIPTokenizer`` (NFC, whitespace runs, lower case) and split by
    its pattern: letter runs, single digits, punctuation runs and contractions ("'s").
    E.g. "Street-level view, 2 cars" gives [",", "-", "2", "cars", "level", "street", "view"].
    """
    return sorted({_from_byte_level(p) for text in captions for p in _byte_words(text)})


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Return ``symbols`` merged as the ``tokenizers`` BPE model merges them.

    At each step the adjacent pair with the lowest merge rank is merged, the leftmost one on
    ties, until no adjacent pair is a merge.
    """
    symbols = list(symbols)
    while len(symbols) > 1:
        best = min(
            ((ranks[pair], i) for i, pair in enumerate(pairwise(symbols)) if pair in ranks),
            default=None,
        )
        if best is None:
            break
        i = best[1]
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def learn_merges(pieces: Iterable[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Return (vocabulary tokens in id order, merges in rank order) for byte-level ``pieces``.

    Pieces are processed in the given order. A piece is tokenized with the merges so far; while
    it gives more than one token, the merge of its first two tokens is appended (with the
    lowest priority). Appended merges never change the tokens of earlier pieces: their merging
    only used merges of higher priority, which always applied first. So every piece ends as
    one token "piece</w>".
    """
    base = list(bytes_to_unicode().values())
    tokens = dict.fromkeys([*base, *(s + END_OF_WORD for s in base)])
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for piece in pieces:
        symbols = [*piece[:-1], piece[-1] + END_OF_WORD]
        while len(parts := _bpe(symbols, ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            tokens[pair[0] + pair[1]] = None
    return [*tokens, BOS, EOS], merges


def build_clip_tokenizer(
    words: Iterable[str], folder: str | Path, model_max_length: int = 77
) -> CLIPTokenizer:
    """Write a CLIP BPE tokenizer for ``words`` into ``folder`` and return it loaded from there.

    ``words`` may be words or whole captions: they are split by :func:`caption_words`, and each
    resulting word is one token. The files (vocab.json, merges.txt and what ``save_pretrained``
    writes) depend only on the set of words, so the same words give byte-identical files.
    Stale tokenizer files in ``folder`` are replaced.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    pieces = sorted({p for w in caption_words(words) for p in _byte_words(w)})
    vocab, merges = learn_merges(pieces)
    (folder / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8"
    )
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length).save_pretrained(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    single = tokenizer.backend_tokenizer.model
    broken = [p for p in pieces if len(single.tokenize(p)) != 1]
    if broken:  # cannot happen unless the tokenizers BPE changes its merge order
        raise RuntimeError(f"words not tokenized as one token: {broken[:10]}")
    return tokenizer
