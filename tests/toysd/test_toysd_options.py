"""The next recipes' options of the embedded model: the shipped recipe unchanged, each
option doing what it says, and the candidate command end to end at a tiny size on the CPU."""

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from test_toysd_recipe import tiny

from diffprompt.backbones.diffusion import DiffusionBackbone, FeatureConfig
from diffprompt.backbones.hub import BUNDLED
from diffprompt.io import digest
from diffprompt.labels import CLASSES
from diffprompt.text import encode_scene, tokenize
from diffprompt.toysd import candidates
from diffprompt.toysd.config import OPTIONS, ToySDConfig, recorded_recipe
from diffprompt.toysd.options import (
    crop_caption,
    load_components,
    padding_mask,
    padding_masked,
    random_crops,
    select_parts,
)
from diffprompt.toysd.pretrain import pretrain, recipe_hash
from diffprompt.toysd.text_use import meets_the_bar, prompt_sensitivity

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(line: str) -> None:
    """A progress callback that drops every line."""


@pytest.fixture(scope="module")
def base(tmp_path_factory, mini_root):
    """A tiny pretrained toy model to fine-tune."""
    d = tmp_path_factory.mktemp("options")
    cfg = tiny(mini_root)
    out = pretrain(cfg, d / "base", d / "base.work", device="cpu", progress=quiet)
    return SimpleNamespace(cfg=cfg, folder=out, dir=d, root=mini_root)


# ---------------------------------------------------------------------------------------
# The shipped recipe


def test_the_default_recipe_is_the_shipped_models():
    shipped = json.loads((Path(BUNDLED["toy-sd"]) / "training.json").read_text())["recipe"]
    assert recorded_recipe(ToySDConfig()) == shipped
    assert recipe_hash(ToySDConfig()) == digest(shipped, size=8)
    # every option is neutral by default and recorded only when set
    assert set(OPTIONS) <= set(ToySDConfig.__dataclass_fields__)
    assert not set(OPTIONS) & set(shipped)
    cfg = ToySDConfig(text_embedding=True, train_parts=("text_embedding",))
    rec = recorded_recipe(cfg)
    assert rec["text_embedding"] is True and rec["train_parts"] == ["text_embedding"]
    assert "mask_padding" not in rec and recipe_hash(cfg) != recipe_hash(ToySDConfig())


@pytest.mark.parametrize(
    "bad, words",
    [
        (dict(train_parts=("unet", "decoder")), "decoder"),
        (dict(crop_size=30), "multiple of 16"),
        (dict(crop_size=256), "up to the height"),
        (dict(crop_share=1.5), "probabilities"),
        (dict(parts_steps=10), "needs train_parts"),
        (dict(time_limit_min=-1.0), ">= 0"),
    ],
)
def test_bad_options_are_named_before_any_work(bad, words):
    with pytest.raises(ValueError, match=words):
        ToySDConfig(**bad)


# ---------------------------------------------------------------------------------------
# The pieces


def test_padding_mask_reads_bos_to_the_first_eos():
    eos = 9
    ids = torch.tensor([[8, 1, 2, 9, 9, 9], [8, 9, 9, 9, 9, 9], [8, 1, 2, 3, 4, 5]])
    expect = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    assert torch.equal(padding_mask(ids, eos), expect)


def test_crop_caption_names_the_classes_of_the_crop_largest_first():
    shares = torch.zeros(len(CLASSES), 2, 4, dtype=torch.uint8)
    road, car, sky, pole = (CLASSES.index(c) for c in ("road", "car", "sky", "pole"))
    shares[road] = 255  # every cell
    shares[car, :, :2] = 255  # half
    shares[sky, 0, 0] = 255  # an eighth
    shares[pole, 0, 0] = 2  # 0.1 % of the crop: below the threshold
    caption = "a photo of a street scene at night showing road, building and sky, with a bus"
    got = crop_caption(caption, shares, 0.02)
    assert got == "a photo of a street scene at night showing road, car and sky"
    assert crop_caption(caption, torch.zeros_like(shares), 0.02) == (
        "a photo of a street scene at night"
    )  # an unlabeled image: only its style and condition


def test_random_crops_stay_inside_the_latents():
    cfg = ToySDConfig(crop_size=64)
    h, w, top, left = random_crops(500, cfg, torch.Generator().manual_seed(0))
    assert (h, w) == (16, 32)  # 64 x 128 pixels at the VAE's factor 4
    assert top.min() >= 0 and (top + h).max() <= 32 and (left + w).max() <= 64
    assert len(set(top.tolist())) > 5 and len(set(left.tolist())) > 5


def _unet_out(unet, ctx, mask=None):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 16, 32, generator=g)
    with torch.no_grad(), padding_masked(unet, mask):
        return unet(z, torch.tensor([10, 500]), ctx).sample


def test_the_pooled_text_path_starts_at_zero_and_then_reads_the_text():
    # on the shipped model (the tiny one's 32 channels in 32 groups normalise any shift of
    # the timestep embedding away)
    folder = BUNDLED["toy-sd"]
    plain = load_components(ToySDConfig(), folder)
    comps = load_components(ToySDConfig(text_embedding=True), folder)
    assert comps["unet"].config.addition_embed_type == "text"
    ids = tokenize(comps["tokenizer"], ["a photo of a street scene at night", ""])
    with torch.no_grad():
        ctx = comps["text_encoder"](ids).last_hidden_state
    # at the start the UNet computes what the loaded one did
    assert torch.equal(_unet_out(comps["unet"], ctx), _unet_out(plain["unet"], ctx))
    # once its output norm moves, the pooled text changes the output, per text
    with torch.no_grad():
        comps["unet"].add_embedding.norm2.weight.fill_(1.0)
    moved = _unet_out(comps["unet"], ctx) - _unet_out(plain["unet"], ctx)
    assert moved[0].abs().max() > 1e-4 and not torch.allclose(moved[0], moved[1])


def test_masked_padding_equals_prompts_trimmed_to_eos(base):
    comps = load_components(tiny(base.root), base.folder)
    tok, text = comps["tokenizer"], comps["text_encoder"]
    prompt = "a photo of a street scene at night"
    full = encode_scene(text, tok, prompt)[None].expand(2, -1, -1)
    trimmed = encode_scene(text, tok, prompt, trim=True)[None].expand(2, -1, -1)
    mask = padding_mask(tokenize(tok, [prompt] * 2), tok.eos_token_id)
    assert trimmed.shape[1] == int(mask[0].sum()) < full.shape[1]
    masked = _unet_out(comps["unet"], full, mask)
    assert torch.allclose(masked, _unet_out(comps["unet"], trimmed), atol=1e-5)
    assert not torch.allclose(masked, _unet_out(comps["unet"], full), atol=1e-4)
    # the processors are the stock ones again after the block
    assert not any(
        "PaddingMasked" in type(m.processor).__name__
        for m in comps["unet"].modules()
        if hasattr(m, "processor")
    )


def test_parts_select_what_trains(base):
    cfg = tiny(base.root, text_embedding=True, text_embedding_heads=2)
    comps = load_components(cfg, base.folder)
    unet, text = comps["unet"], comps["text_encoder"]

    def trainable():
        return {
            n for n, p in [*unet.named_parameters(), *text.named_parameters()] if p.requires_grad
        }

    staged = tiny(base.root, text_embedding=True, train_parts=("text_embedding",), parts_steps=3)
    select_parts(unet, text, staged, 0)
    assert trainable() and all(n.startswith("add_embedding.") for n in trainable())
    select_parts(unet, text, staged, 3)  # after parts_steps: everything
    assert len(trainable()) == len(list(unet.parameters())) + len(list(text.parameters()))
    cross = tiny(base.root, train_parts=("cross_attention_qk",))
    select_parts(unet, text, cross, 0)
    # query and key of every cross-attention layer: attn2, and attn1 where a block has
    # only cross-attention (the finest level)
    cross_layers = [n for n, m in unet.named_modules() if getattr(m, "is_cross_attention", False)]
    assert any(n.endswith("attn1") for n in cross_layers)
    assert trainable() == {f"{n}.{w}.weight" for n in cross_layers for w in ("to_q", "to_k")}


def test_fine_tuning_refuses_another_architecture(base):
    cfg = tiny(base.root, unet_channels=(32, 64, 64))
    with pytest.raises(ValueError, match="unet_channels"):
        load_components(cfg, base.folder)


def test_prompt_sensitivity_is_zero_for_one_prompt_and_positive_between_two(base):
    bb = DiffusionBackbone.from_pretrained(base.folder, FeatureConfig(blocks=(0, 1, 2)))
    x = torch.rand(2, 3, 64, 128, generator=torch.Generator().manual_seed(1))
    same = prompt_sensitivity(bb, x, ["a photo of a street"] * 2, timesteps=(1, 200))
    assert list(same.index) == [1, 200] and (same["scene vs scene %"] == 0).all()
    two = prompt_sensitivity(bb, x, ["a photo of a street", "a street scene at night in fog"])
    assert (two["scene vs scene %"] > 0).all() and (two["scene vs empty %"] > 0).all()
    assert bb.cfg.timesteps == (1,)  # its feature config restored


def test_the_bar():
    shipped = {"binding mIoU": 2.7, "scene vs scene % t=1": 5.0, "probe mIoU": 44.6}
    ok, why = meets_the_bar({**shipped, "binding mIoU": 26.0, "probe mIoU": 43.0}, shipped)
    assert ok and "met" in why
    assert not meets_the_bar({**shipped, "binding mIoU": 26.0, "probe mIoU": 42.0}, shipped)[0]
    assert meets_the_bar({**shipped, "scene vs scene % t=1": 30.0}, shipped)[0]
    assert not meets_the_bar(shipped, shipped)[0]


# ---------------------------------------------------------------------------------------
# The candidate command, tiny, on the CPU


def test_the_candidate_command_trains_checkpoints_and_measures(base, tmp_path, capsys):
    out, results = tmp_path / "cand", tmp_path / "results"
    tiny_fields = {
        k: v for k, v in vars(tiny(base.root)).items() if k not in candidates.CANDIDATES["gpu10"]
    }
    sets = [
        f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
        for k, v in tiny_fields.items()
    ]
    sets += [
        f"init_from={base.folder}",
        "text_embedding_heads=2",
        "crop_size=32",
        "crop_share=1.0",
        "parts_steps=2",
        "unet_steps=4",
        "unet_batch=2",
        "warmup=1",
        "log_every=1",
        "eval_every=2",
        "ckpt_every=2",
        "ckpt_minutes=0.00001",  # every step: a usable model in work/model
    ]
    argv = ["--recipe", "gpu10", "--device", "cpu", "--out", str(out), "--results", str(results)]
    argv += ["--baseline", str(base.folder), "--images", "2", "--probe-steps", "2"]
    argv += ["--probe-images", "2,2", "--set", *sets]
    candidates.main(argv)
    printed = capsys.readouterr().out
    assert "verdict: False" in printed  # a 4-step tiny model does not meet the bar
    rec = json.loads((out / "training.json").read_text())
    assert rec["recipe"]["init_from"] == str(base.folder) and rec["recipe"]["text_embedding"]
    assert (out.with_name("cand.work") / "model" / "unet" / "config.json").is_file()
    table = pd.read_csv(results / "tables" / "toy_sd_text_use_gpu10.csv", index_col=0)
    assert list(table.index) == [str(base.folder), "gpu10"]
    assert table.filter(like="scene vs").ge(0).all().all()
    assert table["probe mIoU"].between(0, 100).all() and table["binding mIoU"].between(0, 100).all()
    manifest = json.loads((results / "manifests" / "toy_sd_candidate_gpu10.json").read_text())
    assert manifest["verdict"] is False and "probe" in manifest["why"]
    assert manifest["params"]["config"]["crop_size"] == 32
    assert manifest["unet_steps_trained"] == 4 and manifest["unet_seconds"] > 0
    # the frozen parts stayed the base model's for the first steps only: after parts_steps
    # everything trained, so the convolutions moved too
    before = load_file(base.folder / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert set(after) - set(before) and all(
        k.startswith("add_embedding.") for k in set(after) - set(before)
    )
    assert not torch.equal(before["conv_in.weight"], after["conv_in.weight"])


def test_parts_alone_leave_the_rest_of_the_model_untouched(base, tmp_path):
    cfg = tiny(
        base.root,
        init_from=str(base.folder),
        text_embedding=True,
        text_embedding_heads=2,
        train_parts=("text_embedding",),
        time_limit_min=1e-6,  # stops after its first step
    )
    lines: list[str] = []
    out = pretrain(cfg, tmp_path / "m", tmp_path / "m.work", device="cpu", progress=lines.append)
    assert any("time limit" in line and "step 1" in line for line in lines)
    before = load_file(base.folder / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert after["add_embedding.norm2.weight"].abs().max() > 0  # the new path moved
    t0 = load_file(base.folder / "text_encoder" / "model.safetensors")
    t1 = load_file(out / "text_encoder" / "model.safetensors")
    assert all(torch.equal(t0[k], t1[k]) for k in t0)


def test_the_candidate_command_rejects_bad_input_before_work(capsys):
    with pytest.raises(SystemExit, match="unknown candidate recipe 'gpu11'"):
        candidates.main(["--recipe", "gpu11"])
    with pytest.raises(SystemExit, match="unknown ToySDConfig field"):
        candidates.main(["--set", "unet_stepz=3"])
    with pytest.raises(SystemExit, match="probe-images"):
        candidates.main(["--probe-images", "0,2"])
