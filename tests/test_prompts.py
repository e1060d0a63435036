"""Conditioning of the UNet: category embeddings, adapter, scene prompts and their assembly."""

import copy

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from diffprompt import labels
from diffprompt.backbones.tokenizer import build_clip_tokenizer
from diffprompt.prompts import (
    SCENE_VOCABULARY,
    LearnableScenePrompt,
    LearnedSpan,
    PromptConfig,
    Prompts,
    TextAdapter,
    assemble_conditioning,
    prompt_corpus,
    sample_scene_prompts,
)
from diffprompt.text import (
    TEMPLATES,
    category_embeddings,
    category_fingerprint,
    clear_category_cache,
    encode_scene,
    encode_texts,
    null_conditioning,
    tokenize,
)

L, D = 32, 32  # the tiny tokenizer's model length and the tiny encoder's width
FEW = ("road", "traffic light", "car")
SCENE = "a photo of an urban street scene"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    return build_clip_tokenizer(prompt_corpus(labels.CLASSES), folder, model_max_length=L)


@pytest.fixture(scope="module")
def encoder(tok):
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=L,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return CLIPTextModel(cfg).eval()


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_category_cache()
    yield
    clear_category_cache()


class CountCalls:
    """Counts the forward calls of a module while registered (a context manager)."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_hook(
            lambda *_: setattr(self, "calls", self.calls + 1)
        )
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def ids_of(tok, texts):
    return tok(list(texts), padding="max_length", truncation=True, return_tensors="pt").input_ids


def test_corpus_prompts_fit_the_tiny_model(tok):
    texts = prompt_corpus(labels.CLASSES) + sample_scene_prompts(
        50, torch.Generator().manual_seed(0)
    )
    assert max(len(tok(t).input_ids) for t in texts) <= L
    assert len(tok("traffic light").input_ids) == 4  # every word is one token


def test_encode_texts(encoder, tok):
    texts = ["a car", "a photo of the traffic light."]
    enc = encode_texts(encoder, tok, texts)
    assert enc.last_hidden_state.shape == (2, L, D) and enc.pooled.shape == (2, D)
    assert not enc.pooled.requires_grad
    ids = ids_of(tok, texts)
    eos = (ids == tok.eos_token_id).int().argmax(dim=1)
    assert eos.tolist() == [3, 8]
    torch.testing.assert_close(enc.pooled, enc.last_hidden_state[torch.arange(2), eos])
    with torch.no_grad():
        ref = encoder(input_ids=ids)
    torch.testing.assert_close(enc.last_hidden_state, ref.last_hidden_state)
    torch.testing.assert_close(enc.pooled, ref.pooler_output)
    assert encode_texts(encoder, tok, texts, grad=True).pooled.requires_grad


def test_encode_scene_and_trim(encoder, tok):
    full = encode_scene(encoder, tok, SCENE)
    trimmed = encode_scene(encoder, tok, SCENE, trim=True)
    assert full.shape == (L, D)
    assert trimmed.shape == (len(SCENE.split()) + 2, D)  # BOS, 7 words, EOS
    torch.testing.assert_close(trimmed, full[: len(trimmed)])


def test_null_conditioning(encoder, tok):
    null = null_conditioning(encoder, tok, 3)
    assert null.shape == (3, L, D)
    for b in range(3):
        torch.testing.assert_close(null[b], encode_scene(encoder, tok, ""))


def test_category_embedding_is_the_template_average(encoder, tok):
    emb = category_embeddings(encoder, tok, FEW, num_templates=3)
    assert emb.shape == (len(FEW), D) and emb.dtype == torch.float32
    with torch.no_grad():
        ref = torch.stack(
            [
                torch.stack(
                    [
                        encoder(input_ids=ids_of(tok, [t.format(c)])).pooler_output[0]
                        for t in TEMPLATES[:3]
                    ]
                ).mean(0)
                for c in FEW
            ]
        )
    torch.testing.assert_close(emb, ref)
    all_templates = category_embeddings(encoder, tok, FEW)
    assert all_templates.shape == emb.shape and not torch.allclose(all_templates, emb)
    assert not torch.allclose(emb[0], emb[1])  # classes differ


def test_word_pooling_averages_the_class_name_tokens(encoder, tok):
    emb = category_embeddings(encoder, tok, FEW, num_templates=2, pooling="word")
    ref = []
    with torch.no_grad():
        for c in FEW:
            per_template = []
            for t in TEMPLATES[:2]:
                text = t.format(c)
                ids = ids_of(tok, [text])
                name = tok(c, add_special_tokens=False).input_ids
                row = ids[0].tolist()
                s = next(i for i in range(len(row)) if row[i : i + len(name)] == name)
                states = encoder(input_ids=ids).last_hidden_state[0]
                per_template.append(states[s : s + len(name)].mean(0))
            ref.append(torch.stack(per_template).mean(0))
    torch.testing.assert_close(emb, torch.stack(ref))
    assert not torch.allclose(emb, category_embeddings(encoder, tok, FEW, num_templates=2))
    with pytest.raises(ValueError, match="pooling"):
        category_embeddings(encoder, tok, FEW, pooling="cls")


def test_category_cache_hit_skips_the_encoder(encoder, tok):
    with CountCalls(encoder) as count:
        first = category_embeddings(encoder, tok, FEW, num_templates=2)
        assert count.calls == 1
        first += 1.0  # the caller's copy: the cache must not change
        second = category_embeddings(encoder, tok, FEW, num_templates=2)
        assert count.calls == 1
        torch.testing.assert_close(second, first - 1.0)
        category_embeddings(encoder, tok, FEW[:2], num_templates=2)  # other classes
        category_embeddings(encoder, tok, FEW, num_templates=3)  # other templates
        assert count.calls == 3


def test_category_cache_key_follows_the_weights(encoder, tok):
    other = copy.deepcopy(encoder)
    key = category_fingerprint(encoder, tok, FEW, TEMPLATES[:2])
    assert category_fingerprint(other, tok, FEW, TEMPLATES[:2]) == key
    with torch.no_grad():
        other.final_layer_norm.bias[0] += 1e-3
    assert category_fingerprint(other, tok, FEW, TEMPLATES[:2]) != key
    a = category_embeddings(encoder, tok, FEW, num_templates=2)
    with CountCalls(other) as count:
        b = category_embeddings(other, tok, FEW, num_templates=2)
    assert count.calls == 1 and not torch.equal(a, b)


def test_disk_cache_survives_clearing_memory(encoder, tok, tmp_path):
    first = category_embeddings(encoder, tok, FEW, num_templates=2, cache_dir=tmp_path)
    key = category_fingerprint(encoder, tok, FEW, TEMPLATES[:2])
    assert [p.name for p in tmp_path.iterdir()] == [f"category-{key}.safetensors"]  # no tmp left
    clear_category_cache()
    with CountCalls(encoder) as count:
        again = category_embeddings(encoder, tok, FEW, num_templates=2, cache_dir=tmp_path)
    assert count.calls == 0
    torch.testing.assert_close(again, first)


def test_text_adapter_starts_near_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(19, D, generator=g)
    adapter = TextAdapter(D)
    assert adapter.gamma.shape == (D,)
    y = adapter(x)
    assert y.shape == x.shape
    rel = (y - x).norm() / x.norm()
    assert 0 < rel <= 1e-3
    xb = torch.randn(4, 19, D, generator=g)
    torch.testing.assert_close(adapter(xb)[2], adapter(xb[2]))
    with torch.no_grad():
        adapter.gamma.fill_(1.0)
    torch.testing.assert_close(adapter(x), x + adapter.fc(x))
    hidden = TextAdapter(D, hidden=8).fc
    assert hidden[0].out_features == 8 and isinstance(hidden[1], torch.nn.GELU)


@pytest.mark.parametrize("trim", [False, True])
def test_learnable_prompt_equals_encode_scene_at_init(encoder, tok, trim):
    prompt = LearnableScenePrompt(encoder, tok, SCENE, trim=trim)
    assert prompt.words.shape == (len(SCENE.split()), D)
    out = prompt(encoder)
    assert torch.equal(out, encode_scene(encoder, tok, SCENE, trim=trim))
    assert not encoder.get_input_embeddings()._forward_hooks  # the hook is gone


def test_learnable_prompt_trains_only_its_words(encoder, tok):
    prompt = LearnableScenePrompt(encoder, tok, SCENE)
    flags = [p.requires_grad for p in encoder.parameters()]
    assert all(flags)  # even a trainable encoder must not receive gradients
    loss = prompt(encoder).pow(2).sum()
    loss.backward()
    assert prompt.words.grad is not None and prompt.words.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())
    assert [p.requires_grad for p in encoder.parameters()] == flags
    assert [n for n, _ in prompt.named_parameters()] == ["words"]
    assert list(prompt.state_dict()) == ["words"]


def test_learnable_prompt_changes_resets_and_reads_back(encoder, tok):
    prompt = LearnableScenePrompt(encoder, tok, SCENE)
    assert prompt.nearest_words(tok) == [[w] for w in SCENE.split()]
    init = prompt()
    with torch.no_grad():
        prompt.words[1] = encoder.get_input_embeddings().weight[
            tok.convert_tokens_to_ids("painting</w>")
        ]
    changed = prompt()
    assert not torch.allclose(changed, init)
    assert torch.equal(changed[:2], init[:2])  # causal: BOS and the first word are unchanged
    assert prompt.nearest_words(tok, k=2)[1][0] == "painting"
    assert len(prompt.nearest_words(tok, k=2)[0]) == 2
    prompt.reset()
    assert torch.equal(prompt(), init)


def test_a_learned_span_equals_the_plain_encodings_at_init_and_learns_its_words(encoder, tok):
    """TTA from the caption: one phrase learned inside texts of different lengths."""
    texts = [
        "a photo of a street scene at night showing road",
        "a street at night",
        "at night, a photo of a street scene with trees, three cars and a bus",
    ]
    span = LearnedSpan(encoder, tok, "at night")
    assert (
        span.words.shape == (2, D)
        and span.init_ids.tolist() == tok("at night", add_special_tokens=False)["input_ids"]
    )
    ids = tokenize(tok, texts)
    assert span.positions(ids) == [7, 3, 1]
    out = span(texts)
    assert out.shape == (3, tok.model_max_length, D)
    for i, text in enumerate(texts):
        torch.testing.assert_close(out[i], encode_scene(encoder, tok, text))
    out.pow(2).sum().backward()
    assert span.words.grad is not None and span.words.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())
    assert [n for n, _ in span.named_parameters()] == ["words"]
    with torch.no_grad():  # the span's words move: every text changes, from the span on
        span.words.add_(torch.randn(span.words.shape, generator=torch.Generator().manual_seed(0)))
    moved = span(texts)
    for i, start in enumerate([7, 3, 1]):
        torch.testing.assert_close(moved[i, :start], out[i, :start].detach())
        assert not torch.allclose(moved[i, start], out[i, start])
    assert float(span.drift().min()) > 0
    span.reset()
    torch.testing.assert_close(span(texts), out.detach())
    with pytest.raises(ValueError, match="does not hold the learned phrase 'at night'"):
        span(["a street in fog"])
    with pytest.raises(ValueError, match="needs a phrase with words"):
        LearnedSpan(encoder, tok, " ")


def test_assemble_conditioning():
    g = torch.Generator().manual_seed(0)
    cat, scene = torch.randn(5, D, generator=g), torch.randn(7, D, generator=g)
    out = assemble_conditioning(cat, scene, 3)
    assert out.shape == (3, 12, D)
    assert torch.equal(out[1, :5], cat) and torch.equal(out[2, 5:], scene)
    batched = torch.randn(3, 7, D, generator=g)
    assert torch.equal(assemble_conditioning(cat, batched, 3)[:, 5:], batched)
    assert assemble_conditioning(None, scene, 2).shape == (2, 7, D)
    assert assemble_conditioning(cat.half(), scene, 2).dtype == torch.float32
    with pytest.raises(ValueError, match="needs"):
        assemble_conditioning(None, None, 2)
    with pytest.raises(ValueError):
        assemble_conditioning(cat, batched, 2)


@pytest.mark.parametrize(
    ("cfg", "n"),
    [
        (PromptConfig(tokens="null"), L),
        (PromptConfig(tokens="category", num_templates=2), 19),
        (PromptConfig(tokens="scene", num_templates=2), 19 + L),
        (PromptConfig(tokens="scene", num_templates=2, trim_scene=True), 19 + 9),
        (
            PromptConfig(tokens="scene", num_templates=2, learnable_scene=True, trim_scene=True),
            19 + 9,
        ),
    ],
)
def test_prompts_tokens(encoder, tok, cfg, n):
    prompts = Prompts(encoder, tok, labels.CLASSES, cfg)
    out = prompts(4)
    assert out.shape == (4, n, D) and prompts.num_tokens == n
    assert prompts.category_slice == (None if cfg.tokens == "null" else slice(0, 19))
    names = {name.split(".")[0] for name, _ in prompts.named_parameters()}
    assert names == {"null": set(), "category": {"adapter"}}.get(
        cfg.tokens, {"adapter", "scene_prompt"} if cfg.learnable_scene else {"adapter"}
    )
    assert {k.split(".")[0] for k in prompts.state_dict()} == names  # no encoder weights
    assert not any(m is encoder for m in prompts.modules())
    if cfg.tokens == "null":
        torch.testing.assert_close(out, null_conditioning(encoder, tok, 4))
        return
    category = category_embeddings(encoder, tok, labels.CLASSES, num_templates=2)
    torch.testing.assert_close(
        out[:, prompts.category_slice], prompts.adapter(category).expand(4, -1, -1)
    )
    if cfg.tokens == "scene":
        scene = encode_scene(encoder, tok, cfg.scene_text, trim=cfg.trim_scene)
        torch.testing.assert_close(out[:, 19:], scene.expand(4, -1, -1))


def test_prompts_without_adapter_give_the_category_embeddings(encoder, tok):
    prompts = Prompts(
        encoder, tok, FEW, PromptConfig(tokens="category", num_templates=2, adapter=False)
    )
    assert list(prompts.parameters()) == []
    torch.testing.assert_close(
        prompts(2)[0], category_embeddings(encoder, tok, FEW, num_templates=2)
    )


def test_scene_texts_override_only_the_scene_part(encoder, tok):
    prompts = Prompts(encoder, tok, FEW, PromptConfig(num_templates=2))
    texts = sample_scene_prompts(2, torch.Generator().manual_seed(1))
    default, override = prompts(2), prompts(2, scene_texts=texts)
    assert override.shape == default.shape
    torch.testing.assert_close(override[:, :3], default[:, :3])
    for b, text in enumerate(texts):
        torch.testing.assert_close(override[b, 3:], encode_scene(encoder, tok, text))
    assert not torch.allclose(override[:, 3:], default[:, 3:])
    with CountCalls(encoder) as count:
        prompts(2, scene_texts=texts)  # cached per text
    assert count.calls == 0
    with pytest.raises(ValueError):
        prompts(3, scene_texts=texts)


def test_sample_scene_prompts_are_seeded_and_varied():
    a = sample_scene_prompts(20, torch.Generator().manual_seed(0))
    b = sample_scene_prompts(20, torch.Generator().manual_seed(0))
    c = sample_scene_prompts(20, torch.Generator().manual_seed(1))
    assert a == b and a != c
    assert len(set(a)) >= 18
    for p in a:
        assert "{" not in p and "  " not in p
        assert any(p.startswith(s + " of ") for s in SCENE_VOCABULARY["style"])
        assert any(t in p for t in SCENE_VOCABULARY["time"])
    seen_places = {pl for p in a for pl in SCENE_VOCABULARY["place"] if pl in p}
    assert len(seen_places) >= 4
    custom = sample_scene_prompts(3, torch.Generator(), {"x": ("one",)}, template="{x} scene")
    assert custom == ["one scene"] * 3
