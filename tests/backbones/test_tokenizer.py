"""The CLIP BPE tokenizer built from caption words: whole-word tokens, byte fallback, files."""

import json

import pytest
from tokenizers.models import BPE

from diffprompt.backbones.tokenizer import (
    BOS,
    EOS,
    build_clip_tokenizer,
    bytes_to_unicode,
    caption_words,
    learn_merges,
)

CAPTION = (
    "a rendered street scene in daylight showing road, sidewalk, building, vegetation and sky, "
    "with two cars and a traffic light"
)
CITYSCAPES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
TEXTS = (CAPTION, *CITYSCAPES, "a street-level view")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_clip_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), model_max_length=16)


def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord("a")] == "a" and table[ord(" ")] == "Ġ"  # as in CLIP's vocabulary


def test_caption_words_split_like_clip(tok):
    words = caption_words(["Street-level VIEW, 2 cars;  über 42", "x<|endoftext|>x"])
    assert words == [",", "-", "2", "4", ";", "cars", "level", "street", "view", "x", "über"]
    # the same pieces as CLIPTokenizer's own pre-tokenizer (byte-level encoded)
    backend = tok.backend_tokenizer
    text = "Street-level VIEW, 2 cars"
    pieces = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))
    assert sorted(p for p, _ in pieces) == caption_words([text])


def test_every_word_is_one_token(tok):
    words = caption_words(TEXTS)
    assert {"traffic", "light", "street", "-", "level", "vegetation", "motorcycle"} <= set(words)
    for word in words:
        ids = tok(word).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert len(ids) == 3, (word, tok.convert_ids_to_tokens(ids))
        assert tok.convert_ids_to_tokens(ids[1:2]) == [word + "</w>"]
    ids = tok(CAPTION).input_ids
    assert len(ids) == len(CAPTION.replace(",", " ,").split()) + 2


@pytest.mark.parametrize("text", ["zebra", "über", "a zebra crossing at 9pm!", "Ünïcode 日本"])
def test_unseen_text_falls_back_and_round_trips(tok, text):
    ids = tok(text).input_ids
    assert tok.unk_token_id not in ids[1:-1]  # bytes, never unknown
    assert len(ids) > len(text.split()) + 2  # unseen words take several tokens
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert decoded.replace(" ", "") == text.lower().replace(" ", "")


def test_special_tokens_and_padding(tok):
    vocab = tok.get_vocab()
    assert tok.bos_token == BOS and tok.eos_token == EOS and tok.pad_token == EOS
    assert tok.bos_token_id == vocab[BOS] == len(vocab) - 2
    assert tok.eos_token_id == tok.pad_token_id == vocab[EOS] == len(vocab) - 1
    assert tok.model_max_length == 16
    ids = tok(["a car", CAPTION], padding="max_length", truncation=True).input_ids
    assert [len(i) for i in ids] == [16, 16]
    assert ids[0] == [tok.bos_token_id, vocab["a</w>"], vocab["car</w>"]] + [tok.eos_token_id] * 13
    assert ids[1][0] == tok.bos_token_id and ids[1][-1] == tok.eos_token_id  # truncated


def test_vocabulary_holds_bytes_words_and_merges(tmp_path):
    build_clip_tokenizer(["Bicycle"], tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    merges = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    # 256 bytes, 256 bytes + "</w>", 6 merges building "bicycle</w>", 2 special tokens
    assert len(vocab) == 256 + 256 + 6 + 2 and len(merges) == 6
    assert "bicycle</w>" in vocab and "Bicycle</w>" not in vocab
    for merge in merges:
        a, b = merge.split(" ")
        assert a in vocab and b in vocab and a + b in vocab


def test_merges_survive_overlapping_words():
    # words whose greedy merges interact: each must still end as one token
    pieces = ["a", "aa", "aaaa", "aaaaaaa", "abcd", "bcde", "cde", "bc", "abcabc"]
    vocab, merges = learn_merges(sorted(pieces))
    ids = {t: i for i, t in enumerate(vocab)}
    bpe = BPE(vocab=ids, merges=merges, end_of_word_suffix="</w>", unk_token=EOS)
    for p in pieces:
        assert [t.value for t in bpe.tokenize(p)] == [p + "</w>"]
    assert [t.value for t in bpe.tokenize("aaa")] != ["aaa</w>"]  # not a word: several tokens


def test_deterministic_files(tmp_path):
    a = build_clip_tokenizer(TEXTS, tmp_path / "a")
    b = build_clip_tokenizer(reversed(TEXTS + TEXTS), tmp_path / "b")
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert a(CAPTION).input_ids == b(CAPTION).input_ids


def test_rebuild_replaces_stale_files(tmp_path):
    build_clip_tokenizer(TEXTS, tmp_path)
    tok = build_clip_tokenizer(["zebra"], tmp_path, model_max_length=8)
    assert tok.model_max_length == 8
    assert len(tok("zebra").input_ids) == 3
    assert len(tok("vegetation").input_ids) > 3  # the old words are gone
