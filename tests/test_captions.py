"""Caption prompts (TADP's idea): where captions come from, their condition words, the
caption prompt modes in the feature cache and in DG training."""

import json

import pytest
import torch

from diffprompt import cache as C
from diffprompt.backbones.hub import ModelNotFoundError
from diffprompt.build import build_model
from diffprompt.captions import (
    REPLACEMENTS,
    CaptionBook,
    CaptionError,
    CaptionPrompt,
    read_captions_file,
    replace_conditions,
    strip_conditions,
)
from diffprompt.data import build_dataset
from diffprompt.dg import trainer as trainer_module
from diffprompt.dg.config import TrainConfig, check_config, config_hash
from diffprompt.dg.sampling import caption_pool, prompt_pool
from diffprompt.dg.trainer import Trainer
from diffprompt.prompts import SceneText

pytestmark = pytest.mark.usefixtures("one_thread")

NIGHT = "a photo of a street scene at night showing road, building and sky, with two cars"


def test_condition_words_are_removed_and_replaced():
    assert strip_conditions(NIGHT) == (
        "a photo of a street scene showing road, building and sky, with two cars"
    )
    assert replace_conditions(NIGHT, "in fog") == (
        "a photo of a street scene in fog showing road, building and sky, with two cars"
    )
    assert strip_conditions("a foggy street at night, in the rain") == "a street"
    # a caption without condition words gets the phrase appended; adjectives are not
    # replaced in place
    assert replace_conditions("a street with cars", "at dusk") == "a street with cars, at dusk"
    assert replace_conditions("a foggy street at night", "in snow") == "a street, in snow"
    assert all(
        strip_conditions(f"a road {p} with cars") == "a road with cars" for p in REPLACEMENTS
    )


def test_captions_files_in_json_and_csv(tmp_path):
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"a": "a road", "b": {"caption": "a car at night"}}))
    assert read_captions_file(j) == {"a": "a road", "b": "a car at night"}
    c = tmp_path / "c.csv"
    c.write_text('name,caption\na,a road\nb,"a car, at night"\n')
    assert read_captions_file(c) == {"a": "a road", "b": "a car, at night"}
    bad = tmp_path / "bad.csv"
    bad.write_text("image,text\na,a road\n")
    with pytest.raises(CaptionError, match="columns name and caption"):
        read_captions_file(bad)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"a": " "}))
    with pytest.raises(CaptionError, match="caption of 'a' is empty"):
        read_captions_file(empty)
    with pytest.raises(CaptionError, match="does not exist"):
        read_captions_file(tmp_path / "nope.json")


def test_the_miniatures_captions_come_from_the_data_set(mini_root):
    ds = build_dataset("acdc_night", "val", mini_root)
    book = CaptionBook()
    assert book.caption(ds, 0) == ds[0]["meta"]["caption"] != ""
    stripped = CaptionPrompt(book, "stripped").text(ds, 0)
    assert "at night" in book.caption(ds, 0) and "at night" not in stripped
    assert CaptionPrompt(book, "replace:in fog").text(ds, 0) == replace_conditions(
        book.caption(ds, 0), "in fog"
    )


@pytest.mark.sets("cityscapes")
def test_real_data_without_captions_needs_a_file_and_names_the_image(fake_root, tmp_path):
    ds = build_dataset("cityscapes", "val", fake_root)
    names = [ds[i]["name"] for i in range(len(ds))]
    own = [ds.meta(i)["caption"] for i in range(len(ds))]  # the fake root captions one
    missing = own.index("")
    with pytest.raises(
        CaptionError, match=f"image '{names[missing]}' of cityscapes / val has no caption"
    ):
        CaptionBook().check(ds, range(len(ds)))
    file = tmp_path / "captions.json"
    file.write_text(json.dumps({n: f"a street {i}" for i, n in enumerate(names)}))
    book = CaptionBook(captions_file=str(file))  # "auto": the data set's own first
    book.check(ds, range(len(ds)))
    assert [book.caption(ds, i) for i in range(len(ds))] == [
        own[i] or f"a street {i}" for i in range(len(ds))
    ]
    only = CaptionBook(source="file", captions_file=str(file))
    assert [only.caption(ds, i) for i in range(len(ds))] == [
        f"a street {i}" for i in range(len(ds))
    ]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({names[0]: "a street"}))
    with pytest.raises(CaptionError, match=f"image '{names[1]}'"):
        CaptionBook(source="file", captions_file=str(partial)).check(ds, range(len(ds)))


def tiny_blip(folder):
    """A random-weight BLIP captioner with its processor, built from configs (no download)."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "road", "car", "night"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    images = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(images, tok).save_pretrained(folder)
    cfg = BlipConfig(
        text_config=dict(
            vocab_size=len(words),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            bos_token_id=words.index("[DEC]"),
            pad_token_id=0,
            sep_token_id=words.index("[SEP]"),
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=16,
        ),
        projection_dim=32,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(cfg).save_pretrained(folder)
    return folder


@pytest.mark.sets("cityscapes")
def test_a_captioner_captions_once_and_its_captions_are_kept(fake_root, tmp_path):
    ds = build_dataset("cityscapes", "val", fake_root)
    model = tiny_blip(tmp_path / "blip")
    book = CaptionBook(source="captioner", captioner=str(model), folder=tmp_path / "cache")
    book.check(ds, [0, 1])  # loads the captioner
    first = [book.caption(ds, i) for i in (0, 1)]
    assert all(isinstance(t, str) and t for t in first)
    kept = list((tmp_path / "cache" / "captions").rglob("*.json"))
    assert len(kept) == 2
    # a new book reads them from disk: the same captions without running the captioner again
    again = CaptionBook(source="captioner", captioner=str(model), folder=tmp_path / "cache")
    calls = []
    again._captioner = type(
        "Spy",
        (),
        {"identity": book.captioner.identity, "__call__": lambda self, x: calls.append(x)},
    )()
    assert [again.caption(ds, i) for i in (0, 1)] == first and not calls


def test_a_missing_captioner_is_a_clear_error_before_any_work(shared_root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = build_dataset("cityscapes", "val", shared_root)
    book = CaptionBook(source="captioner", captioner="nobody/no-such-blip")
    with pytest.raises(ModelNotFoundError, match="captioner 'nobody/no-such-blip'.*HF_HUB_OFFLINE"):
        book.check(ds, [0])


def test_caption_fields_do_not_change_the_hash_of_other_runs():
    base = TrainConfig()
    assert config_hash(base) == config_hash(TrainConfig(test_caption="stripped"))
    cap = TrainConfig(prompt_mode="caption")
    assert config_hash(cap) != config_hash(TrainConfig(prompt_mode="caption", captions_file="x"))
    assert config_hash(cap) != config_hash(base)


def test_caption_modes_check_their_settings():
    with pytest.raises(ValueError, match="num_prompts <= 2"):
        check_config(
            TrainConfig(prompt_mode="caption_random", caption_randomization="drop", num_prompts=3)
        )
    with pytest.raises(ValueError, match="captions_file=PATH"):
        check_config(TrainConfig(prompt_mode="caption", caption_source="file"))
    with pytest.raises(ValueError, match="unknown test_caption"):
        check_config(TrainConfig(prompt_mode="caption", test_caption="own"))
    assert caption_pool(
        TrainConfig(prompt_mode="caption_random", caption_randomization="drop")
    ) == [
        "caption",
        "stripped",
    ]
    pool = prompt_pool(TrainConfig(prompt_mode="caption_consistency", prompt_pool=3))
    assert len(pool) == len(set(pool)) == 3
    assert all(p.startswith("replace:") and p[8:] in REPLACEMENTS for p in pool)
    every = prompt_pool(TrainConfig(prompt_mode="caption_consistency", prompt_pool=0))
    assert len(every) == len(REPLACEMENTS)


def test_cached_caption_features_are_each_images_own(tiny_sd, mini_root):
    """Per-image prompts in the cache: each entry equals the backbone run on that image
    under its own caption's context, and differs from the fixed prompt's."""
    model = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="caption"))
    ds = build_dataset("gta5", "train", mini_root)
    prompt = CaptionPrompt(CaptionBook(), "caption")
    C.MEMORY.clear()
    cache = C.FeatureCache(model)
    got = cache.get(ds, [0, 1, 2], prompt)
    texts = prompt.texts(ds, [0, 1, 2])
    assert len(set(texts)) > 1
    with torch.no_grad():
        n = min(C.CHUNK, len(ds))
        z = cache.latents(ds, list(range(n)))
        ctx = model.context(n, prompt.texts(ds, range(n)))  # the chunk, each under its own
        ref = model.backbone(None, ctx, latents=z)
        fixed = cache.get(ds, [0, 1, 2], SceneText("a photo of a street"))
    for name in got:
        assert torch.equal(got[name], ref[name][:3].to(cache.dtype).float()), name
        assert not torch.equal(got[name], fixed[name])
    # the same entries whichever images are asked for
    assert torch.equal(cache.get(ds, [2], prompt)[name][0], got[name][2])


def test_caption_only_conditions_on_the_caption_alone(tiny_sd):
    model = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="caption_only"))
    with_category = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="caption"))
    texts = ["a road at night", "a car"]
    with torch.no_grad():
        alone = model.context(2, texts)
        both = with_category.context(2, texts)
    assert model.prompts.num_category_tokens == 0
    assert alone.shape[1] + with_category.prompts.num_category_tokens == both.shape[1]
    assert torch.equal(alone, both[:, with_category.prompts.num_category_tokens :])


@pytest.mark.parametrize("mode", ["caption", "caption_consistency"])
@pytest.mark.parametrize("cached", [True, False])
def test_caption_modes_train_and_evaluate(tiny_sd, mini_root, mode, cached, monkeypatch):
    cfg = TrainConfig(
        model=str(tiny_sd),
        data_root=str(mini_root),
        prompt_mode=mode,
        steps=2,
        batch_size=2,
        max_train_images=4,
        max_eval_images=2,
        targets=("acdc_night",),
        prompt_pool=3,
        cache_features=cached,
        warmup=0,
    )
    t = Trainer(cfg, log=lambda _: None)
    seen = []
    original = trainer_module.step_prompts

    def recording(*args):
        drawn = original(*args)
        seen.extend(drawn)
        return drawn

    monkeypatch.setattr(trainer_module, "step_prompts", recording)
    t.fit()
    assert all(isinstance(p, CaptionPrompt) for p in seen)
    if mode == "caption":
        assert {p.variant for p in seen} == {"caption"}
    else:  # K = 2 variants a step, condition words replaced by pool phrases
        assert len(seen) == 2 * cfg.steps and all(p.variant.startswith("replace:") for p in seen)
    assert isinstance(t.test_prompt(), CaptionPrompt) and t.test_prompt().variant == "caption"
    cms = t.evaluate()
    assert len(cms) == 2 and "acdc_night" in cms
    assert all(cm.mat.sum() > 0 for cm in cms.values())


def test_tta_caption_rows_prompt_each_image_with_its_own_caption(tiny_sd, mini_root):
    """TADP's test-time setting in notebook 03: the DG model's scene prompt replaced by each
    target image's own caption; its maps are those of the backbone under that context."""
    from diffprompt.tta import TargetScorer, TTAConfig, prompted

    model = build_model(TrainConfig(model=str(tiny_sd), prompt_mode="fixed")).eval()
    cache = C.FeatureCache(model)
    scorer = TargetScorer(model.backbone, TTAConfig(target="acdc_night"), cache)
    ds = build_dataset("acdc_night", "val", mini_root)
    idx = [0, 1]
    prompt = CaptionPrompt(CaptionBook(), "caption")
    z = cache.latents(ds, idx)
    with torch.no_grad():
        own = cache.batch(ds, idx, prompted(model, prompt)(ds, idx), z)
        ref = model.backbone(None, model.context(2, prompt.texts(ds, idx)), latents=z)
        scene = cache.batch(ds, idx, prompted(model)(ds, idx), z)
    for k in ref:
        assert torch.equal(own[k], ref[k])
        assert not torch.equal(own[k], scene[k])
    stripped = CaptionPrompt(CaptionBook(), "stripped")
    stripped = scorer.evaluate(model, ds, idx, prompted(model, stripped), fixed=True)
    assert stripped.mat.sum() == sum(int((ds.masks([i]) != 255).sum()) for i in idx)
